"""Small shims over transformers API renames, so the engine runs on transformers 4.5x and 5.x alike.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (generate and forward) and ``torch_dtype`` to
``dtype`` (``from_pretrained``; accepted since 4.56). The GPU boxes this project's benchmarks run on may
carry either major version.
"""

from __future__ import annotations

from functools import cache

__all__ = ["cache_kwarg", "dtype_kwarg"]


@cache
def _major_minor() -> tuple[int, int]:
    import transformers

    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def cache_kwarg(model: object) -> str:
    """Name of the KV-cache argument of ``model.forward`` (and ``generate``): ``cache`` or ``past_key_values``.

    Read from the signature, not the version: the rename landed inside the 5.x series.
    """
    import inspect

    params = inspect.signature(model.forward).parameters  # type: ignore[attr-defined]
    return "cache" if "cache" in params else "past_key_values"


def dtype_kwarg() -> str:
    """Name of the dtype argument of ``from_pretrained``."""
    return "dtype" if _major_minor() >= (4, 56) else "torch_dtype"
