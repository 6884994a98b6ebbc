"""Exceptions of adnanny-sft: one base class, so callers can catch everything this package raises."""

from __future__ import annotations

__all__ = [
    "AdNannySftError",
    "ConfigError",
    "DataError",
    "ContaminationError",
    "NonFiniteLossError",
    "CheckpointError",
]


class AdNannySftError(Exception):
    """Base class of every error adnanny-sft raises on purpose."""


class ConfigError(AdNannySftError, ValueError):
    """A configuration key has a bad value (the message names the key, the value and the fix)."""


class DataError(AdNannySftError, ValueError):
    """A training/eval row or file is malformed (the message names the file, row id and column)."""


class ContaminationError(DataError):
    """Training rows overlap a benchmark file (n-gram decontamination refused them)."""


class NonFiniteLossError(AdNannySftError, FloatingPointError):
    """The loss or gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


class CheckpointError(AdNannySftError, OSError):
    """A checkpoint directory is missing, incomplete or was written by an incompatible configuration."""
