"""Decision thresholds on P(non-defect), and the one-class collapse check.

A fine-tuned model's greedy label is the argmax of its label distribution, i.e. a threshold of 0.5 on
``score = P(non-defect)`` — right only when the model is calibrated *and* the deployment prior equals the
training prior. A small model trained on a skewed (or re-balanced) class mix is neither, so its greedy labels
often sit on one side of the boundary for nearly every row (the "one class for all rows" failure) while its
*score* still ranks rows well. The fix is the paper's: choose the threshold on held-out rows. A prediction of
the primary field is a defect iff ``score < threshold``.

Two methods:

* ``max_bacc`` — the threshold that maximises balanced accuracy on the validation rows (ties: the one whose
  predicted defect rate is closest to the gold rate, then the lowest);
* ``match_dr`` — the threshold whose predicted defect rate equals the gold defect rate (paper §5.1: "Model DR ≈
  DR"), i.e. the gold-DR quantile of the scores.

Thresholds are midpoints between adjacent distinct scores, so a score exactly at a validation value is never
on the boundary. Everything here is pure numpy (no model), which is what the tests pin down.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from adnanny_sft.errors import DataError

__all__ = ["COLLAPSE_LIMIT", "METHODS", "CollapseWarning", "Threshold", "bacc_at", "calibrate_threshold",
           "class_distribution", "collapse_message", "warn_if_collapsed"]

METHODS = ("max_bacc", "match_dr")
#: A model that gives one class to more than this share of rows is reported as collapsed.
COLLAPSE_LIMIT = 0.9


class CollapseWarning(UserWarning):
    """A model predicts (nearly) one class for every row: its greedy labels carry no information."""


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision threshold and what it achieves on the rows it was fitted on."""

    value: float
    method: str
    bacc: float  # balanced accuracy on the calibration rows (a fraction)
    gold_defect_rate: float
    pred_defect_rate: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arrays(scores: Sequence[float], is_defect: Sequence[bool]) -> tuple[Any, Any]:
    import numpy as np

    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(is_defect), dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise DataError(f"calibration needs one score per gold label; got {s.shape} scores and {y.shape} labels.")
    if not np.isfinite(s).all():
        raise DataError(f"calibration scores must be finite probabilities; {int((~np.isfinite(s)).sum())} are not.")
    if y.all() or not y.any():
        raise DataError(f"calibration needs both defect and non-defect gold rows; all {len(y)} rows are "
                        f"{'defects' if y.all() else 'non-defects'}.")
    return s, y


def bacc_at(scores: Sequence[float], is_defect: Sequence[bool], threshold: float) -> float:
    """Balanced accuracy of ``defect iff score < threshold`` (mean of the defect and non-defect recalls)."""
    s, y = _arrays(scores, is_defect)
    pred = s < threshold
    return float(0.5 * (pred[y].mean() + (~pred[~y]).mean()))


def _candidates(s: Any) -> Any:
    """Midpoints between adjacent distinct scores, plus one below the minimum and one above the maximum."""
    import numpy as np

    u = np.unique(s)
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[u[0] - 1e-6], mids, [u[-1] + 1e-6]])


def calibrate_threshold(scores: Sequence[float], is_defect: Sequence[bool], method: str = "max_bacc") -> Threshold:
    """The threshold on ``score = P(non-defect)`` chosen by ``method`` (module docstring) on these rows."""
    import numpy as np

    if method not in METHODS:
        raise DataError(f"threshold method must be one of {list(METHODS)}; got {method!r}.")
    s, y = _arrays(scores, is_defect)
    n = len(s)
    gold_dr = float(y.mean())
    cand = _candidates(s)
    # defect iff s < t: per candidate, how many defects / non-defects fall below it (sorted scan, O(n log n))
    order = np.argsort(s, kind="stable")
    ss, yy = s[order], y[order]
    below = np.searchsorted(ss, cand, side="left")  # rows with score < t
    cum_def = np.concatenate([[0], np.cumsum(yy)])
    tp = cum_def[below]  # defects predicted defect
    fp = below - tp  # non-defects predicted defect
    n_def, n_ok = int(y.sum()), int((~y).sum())
    bacc = 0.5 * (tp / n_def + (n_ok - fp) / n_ok)
    pred_dr = below / n
    if method == "max_bacc":
        best = bacc.max()
        ok = np.flatnonzero(np.isclose(bacc, best, rtol=0, atol=1e-12))
        k = int(ok[np.argmin(np.abs(pred_dr[ok] - gold_dr))])  # argmin keeps the lowest on ties
    else:
        gap = np.abs(pred_dr - gold_dr)
        ok = np.flatnonzero(np.isclose(gap, gap.min(), rtol=0, atol=1e-12))
        k = int(ok[np.argmax(bacc[ok])])
    value = float(min(1.0, max(0.0, cand[k])))
    return Threshold(value=value, method=method, bacc=float(bacc[k]), gold_defect_rate=gold_dr,
                     pred_defect_rate=float(pred_dr[k]), n=n)


def class_distribution(predictions: Iterable[Any]) -> dict[str, float]:
    """Share of each predicted value (``None`` = unparsed is its own class), most common first."""
    counts = Counter("<unparsed>" if p is None else str(p) for p in predictions)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.most_common()} if total else {}


def collapse_message(predictions: Iterable[Any], *, limit: float = COLLAPSE_LIMIT, what: str = "predictions"
                     ) -> str | None:
    """A warning text when one class takes more than ``limit`` of the predictions, else None."""
    if not 0.0 < limit <= 1.0 or math.isnan(limit):
        raise DataError(f"collapse limit must be in (0, 1]; got {limit!r}.")
    dist = class_distribution(predictions)
    if not dist:
        return None
    top, share = next(iter(dist.items()))
    if share > limit:
        return (f"{what}: one class takes {share:.0%} of the predictions ({top!r}; distribution "
                f"{ {k: round(v, 3) for k, v in dist.items()} }) — the model has collapsed onto one class; "
                "its greedy labels carry no information (use the calibrated threshold, class balancing, "
                "or more steps).")
    return None


def warn_if_collapsed(predictions: Iterable[Any], *, limit: float = COLLAPSE_LIMIT, what: str = "predictions"
                      ) -> str | None:
    """``collapse_message``, also issued as a :class:`CollapseWarning`; returns the message (or None)."""
    msg = collapse_message(predictions, limit=limit, what=what)
    if msg is not None:
        warnings.warn(msg, CollapseWarning, stacklevel=2)
    return msg
