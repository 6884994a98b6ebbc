"""The one exception family of adnanny-ckpt.

Every user-facing failure (bad config, missing shard, truncated file, a layout that does not divide the model)
raises a subclass of :class:`AdNannyCkptError`, with a message that names the file / tensor / parameter at
fault, the value received and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "AdNannyCkptError",
    "CheckpointFormatError",
    "ConfigMismatchError",
    "LayoutError",
    "UnsafeInputError",
    "VerifyError",
]


class AdNannyCkptError(Exception):
    """Base class of every error adnanny-ckpt raises on purpose."""


class CheckpointFormatError(AdNannyCkptError):
    """A checkpoint on disk is missing, truncated, corrupt or not in the expected format."""


class ConfigMismatchError(AdNannyCkptError):
    """config.json does not describe the tensors that are actually in the checkpoint."""


class LayoutError(AdNannyCkptError, ValueError):
    """A parallel layout that cannot be applied to the model (e.g. EP does not divide the expert count)."""


class UnsafeInputError(AdNannyCkptError):
    """A pickle-based input (.bin/.pt) was given without opting in to unpickling it."""


class VerifyError(AdNannyCkptError):
    """`verify` found tensors missing, duplicated, of the wrong shape/dtype, or with bad checksums."""
