"""adnanny-ckpt: HF (FP8/BF16 safetensors) ⇄ sharded megatron-core checkpoints, and the parallel layout.

Import stays light (no torch): the verbs below import their machinery when called.

>>> from adnanny_ckpt import hf_to_mcore, mcore_to_hf, plan_layout, verify   # doctest: +SKIP
>>> hf_to_mcore("DeepSeek-R1/", "r1-mcore/", pp=31, ep=8, dp=8)              # doctest: +SKIP
>>> from adnanny_ckpt import resolve_model; resolve_model("smollm2")         # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adnanny_ckpt.__about__ import __version__
from adnanny_ckpt.errors import (
    AdNannyCkptError,
    CheckpointFormatError,
    ConfigMismatchError,
    LayoutError,
    UnsafeInputError,
    VerifyError,
)
from adnanny_ckpt.layout import LayoutPlan, ParallelLayout, plan_layout
from adnanny_ckpt.models import UnknownModelError, resolve_model

__all__ = [
    "__version__",
    "AdNannyCkptError",
    "CheckpointFormatError",
    "ConfigMismatchError",
    "LayoutError",
    "UnsafeInputError",
    "VerifyError",
    "LayoutPlan",
    "ParallelLayout",
    "plan_layout",
    "hf_to_mcore",
    "mcore_to_hf",
    "verify",
    "UnknownModelError",
    "resolve_model",
]


def hf_to_mcore(hf: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> Path:
    """HF checkpoint dir -> megatron-core checkpoint (see :func:`adnanny_ckpt.hf2mcore.hf_to_mcore`)."""
    from adnanny_ckpt.hf2mcore import hf_to_mcore as _impl

    return _impl(hf, out, **options)


def mcore_to_hf(mcore: str | os.PathLike[str], out: str | os.PathLike[str], **options: Any) -> Path:
    """megatron-core checkpoint -> HF dir (see :func:`adnanny_ckpt.mcore2hf.mcore_to_hf`)."""
    from adnanny_ckpt.mcore2hf import mcore_to_hf as _impl

    return _impl(mcore, out, **options)


def verify(path: str | os.PathLike[str], hf: str | os.PathLike[str] | None = None, **options: Any) -> dict[str, Any]:
    """Check a converted checkpoint (see :func:`adnanny_ckpt.checks.verify`)."""
    from adnanny_ckpt.checks import verify as _impl

    return _impl(path, hf, **options)
