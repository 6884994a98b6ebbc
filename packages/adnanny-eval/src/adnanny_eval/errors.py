"""One error style for adnanny-eval: a base class, and a warning for undefined metrics.

Every message says what was wrong, names the parameter/file/id in backticks, shows the value received and
says how to fix it. Callers catch `AdNannyEvalError` to handle every input problem of this package at once.
"""

from __future__ import annotations

__all__ = [
    "AdNannyEvalError",
    "DegenerateMetricWarning",
    "InputFileError",
    "JoinError",
    "LabelError",
]


class AdNannyEvalError(ValueError):
    """Base class of every error raised by adnanny-eval for bad input or configuration."""


class LabelError(AdNannyEvalError):
    """A label that no view knows, or a missing label, with the offending ids."""


class JoinError(AdNannyEvalError):
    """Gold and prediction rows do not pair up on `id` (missing or duplicated ids)."""


class InputFileError(AdNannyEvalError):
    """A file that cannot be read: unknown extension, missing file, or a missing column."""


class DegenerateMetricWarning(UserWarning):
    """A metric is undefined for this data (e.g. no defects) and was returned as NaN."""
