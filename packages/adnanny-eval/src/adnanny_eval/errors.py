"""One error style for adnanny-eval: a base class, and a warning for undefined metrics.

Every message says what was wrong, names the parameter/file/id in backticks, shows the value received and
says how to fix it. Callers catch `AdNannyEvalError` to handle every input problem of this package at once.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "MAX_SHOWN",
    "AdNannyEvalError",
    "DegenerateMetricWarning",
    "InputFileError",
    "JoinError",
    "LabelError",
    "ScoreSourceWarning",
    "shown",
]

# How many offending ids a message lists; the rest are counted, so a 10M-row mistake stays one line.
MAX_SHOWN = 10


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


class ScoreSourceWarning(UserWarning):
    """A score column was present but is not this view's P(non-defect), so AUC was left out (says why)."""


def shown(head: Sequence[str], total: int) -> str:
    """``a, b, c and 7 more``: the first `MAX_SHOWN` of `head` (already formatted) and a count of the rest.

    Callers pass only the head they formatted (not all offenders), so naming ids stays cheap on huge files.
    """
    text = ", ".join(head[:MAX_SHOWN])
    more = total - min(len(head), MAX_SHOWN)
    return text + (f" and {more} more" if more > 0 else "")
