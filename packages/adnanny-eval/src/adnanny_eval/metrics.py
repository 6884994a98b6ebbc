"""Binary metrics of §5.1 / §5.2, vectorized, as fractions in [0, 1].

Convention (the paper's, checked against Table 1: Acc = p·PosAcc + (1−p)·NegAcc with p = 1 − DR):
**positive = non-defect, negative = defect**. Inputs are boolean arrays with True = non-defect.

====== =============================== ======================================
key    definition                      undefined (-> NaN + warning) when
====== =============================== ======================================
DR     (TN + FP) / n  (gold defects)   n = 0
ModelDR (TN + FN) / n (flagged)        n = 0
PosAcc TP / (TP + FN)   recall(+)      no gold non-defects
PosPrec TP / (TP + FP)  precision(+)   nothing predicted non-defect
NegAcc TN / (TN + FP)   recall(−)      no gold defects
NegPrec TN / (TN + FN)  precision(−)   nothing flagged as defect
PosF1  2TP / (2TP + FP + FN)           no positives in gold nor predictions
NegF1  2TN / (2TN + FP + FN)           no negatives in gold nor predictions
BACC   (PosAcc + NegAcc) / 2           either recall undefined (one gold class)
Acc    (TP + TN) / n                   n = 0
AUC    P(score(+) > score(−)) + ½ P(=) one gold class (or no scores)
====== =============================== ======================================

Deviations from scikit-learn, on purpose: sklearn returns 0 (with a warning) for an undefined precision and
averages only the classes present for ``balanced_accuracy_score``; we return NaN, because a 0 or a one-class
"balanced" accuracy in a table reads as a real (terrible or fine) result. On non-degenerate data every value
equals sklearn's to ~1e-12 (tests pin 1e-9).

Speed: confusion counts are four ``count_nonzero`` calls on boolean arrays (no Python loop, no int64
widening). AUC is the Mann–Whitney statistic with ties counted ½ — identical to the trapezoidal ROC area
sklearn computes. For scores in [0, 2) (P(non-defect) always is) the float bits are order-preserving
integers, so the gold label rides in the lowest bit of a single int64 sort key: one SIMD sort, then
O(n) passes. Other scores fall back to a stable argsort.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from adnanny_eval.errors import AdNannyEvalError, DegenerateMetricWarning

__all__ = [
    "COUNT_KEYS",
    "METRIC_NAMES",
    "BinaryMetrics",
    "ConfusionCounts",
    "bacc_from_counts",
    "balanced_accuracy",
    "binary_metrics",
    "confusion_counts",
    "metrics_from_counts",
    "roc_auc",
]

# Paper column order (Tables 1–4), with the rate columns named for the query–ad (DR) reading.
METRIC_NAMES: tuple[str, ...] = (
    "DR",
    "Model DR",
    "BACC",
    "Acc",
    "PosAcc",
    "PosPrec",
    "NegAcc",
    "NegPrec",
    "PosF1",
    "NegF1",
    "AUC",
)
# Keys `BinaryMetrics.to_paper` adds after the metrics: counts and the parse-error rate (not metrics of the
# model's answers, so a Delta row leaves them out).
COUNT_KEYS: tuple[str, ...] = ("n", "n_defect", "n_parse_errors", "parse_error_rate", "n_dropped")
# BinaryMetrics attribute behind each paper column, in METRIC_NAMES order.
_FIELDS: tuple[str, ...] = (
    "dr",
    "model_dr",
    "bacc",
    "acc",
    "pos_acc",
    "pos_prec",
    "neg_acc",
    "neg_prec",
    "pos_f1",
    "neg_f1",
    "auc",
)


@dataclass(frozen=True)
class ConfusionCounts:
    """The 2x2 table with positive = non-defect: tp (non-defect kept), tn (defect flagged), fp, fn."""

    tp: int
    fn: int
    fp: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fn + self.fp + self.tn

    @property
    def n_defect(self) -> int:
        """Gold defects (gold negatives)."""
        return self.tn + self.fp

    @property
    def n_flagged(self) -> int:
        """Predicted defects (predicted negatives)."""
        return self.tn + self.fn


@dataclass(frozen=True)
class BinaryMetrics:
    """All §5.1 metrics of one model on one dataset and view, as fractions (NaN where undefined)."""

    counts: ConfusionCounts
    dr: float
    model_dr: float
    bacc: float
    acc: float
    pos_acc: float
    pos_prec: float
    neg_acc: float
    neg_prec: float
    pos_f1: float
    neg_f1: float
    auc: float | None = None
    # Parse errors (see `adnanny_eval.evaluate`): this model's unparsed rows among the rows given, and the
    # rows removed from the evaluation under ``parse_errors="drop"`` (every paired model's unparsed rows).
    n_parse_errors: int = 0
    n_dropped: int = 0

    @property
    def n(self) -> int:
        """Rows the metrics cover (after any dropped rows)."""
        return self.counts.n

    @property
    def parse_error_rate(self) -> float:
        """This model's unparsed rows / all rows given (dropped ones included); NaN for no rows."""
        total = self.counts.n + self.n_dropped
        return self.n_parse_errors / total if total else math.nan

    @property
    def n_defect(self) -> int:
        return self.counts.n_defect

    def to_paper(self, rate_name: str = "DR", *, percent: bool = True) -> dict[str, float | int]:
        """The paper's column names -> values (percent by default), plus counts and the parse-error rate.

        `rate_name` is ``DR`` (query–ad) or ``RR`` (ad–user); ``AUC`` is present only when scores were given.
        Besides the metrics: ``n``, ``n_defect``, ``n_parse_errors``, ``parse_error_rate`` (percent by
        default) and ``n_dropped`` — a parse-error rate is always shown next to the metrics it shaped.
        """
        scale = 100.0 if percent else 1.0
        values: dict[str, float | int] = {}
        for name, attr in zip(METRIC_NAMES, _FIELDS, strict=True):
            value = getattr(self, attr)
            if value is not None:  # only AUC can be absent
                values[name.replace("DR", rate_name)] = value * scale
        values["n"] = self.n
        values["n_defect"] = self.n_defect
        values["n_parse_errors"] = self.n_parse_errors
        values["parse_error_rate"] = self.parse_error_rate * scale
        values["n_dropped"] = self.n_dropped
        return values


def _as_bool(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise AdNannyEvalError(f"`{name}` must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise AdNannyEvalError(
                f"`{name}` must hold 0/1 or booleans (1 = non-defect), got values in [{arr.min()}, {arr.max()}]; "
                "map raw labels with `adnanny_eval.views.to_positive` first"
            )
        return arr.astype(bool)
    raise AdNannyEvalError(
        f"`{name}` must be boolean (True = non-defect), got dtype {arr.dtype}; map raw labels with "
        "`adnanny_eval.views.to_positive` first"
    )


def confusion_counts(y_true: Any, y_pred: Any) -> ConfusionCounts:
    """Count the 2x2 table (True = non-defect) with four popcounts over boolean arrays."""
    t = _as_bool("y_true", y_true)
    p = _as_bool("y_pred", y_pred)
    if t.shape != p.shape:
        raise AdNannyEvalError(
            f"`y_true` has {t.shape[0]} rows but `y_pred` has {p.shape[0]}; pass aligned arrays"
        )
    n = int(t.shape[0])
    n_true = int(np.count_nonzero(t))
    n_pred = int(np.count_nonzero(p))
    tp = int(np.count_nonzero(t & p))
    fn = n_true - tp
    fp = n_pred - tp
    tn = n - n_true - fp
    return ConfusionCounts(tp=tp, fn=fn, fp=fp, tn=tn)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def metrics_from_counts(
    counts: ConfusionCounts, auc: float | None = None, *, warn: bool = True, context: str = ""
) -> BinaryMetrics:
    """Every metric from the 2x2 table; undefined ones are NaN and (if `warn`) one warning names them."""
    tp, fn, fp, tn = counts.tp, counts.fn, counts.fp, counts.tn
    n = counts.n
    pos_acc = _ratio(tp, tp + fn)
    neg_acc = _ratio(tn, tn + fp)
    bacc = (pos_acc + neg_acc) / 2 if not (math.isnan(pos_acc) or math.isnan(neg_acc)) else math.nan
    m = BinaryMetrics(
        counts=counts,
        dr=_ratio(tn + fp, n),
        model_dr=_ratio(tn + fn, n),
        bacc=bacc,
        acc=_ratio(tp + tn, n),
        pos_acc=pos_acc,
        pos_prec=_ratio(tp, tp + fp),
        neg_acc=neg_acc,
        neg_prec=_ratio(tn, tn + fn),
        pos_f1=_ratio(2 * tp, 2 * tp + fp + fn),
        neg_f1=_ratio(2 * tn, 2 * tn + fp + fn),
        auc=auc,
    )
    if warn:
        undefined = [
            k
            for k, v in m.to_paper(percent=False).items()
            if k not in COUNT_KEYS and isinstance(v, float) and math.isnan(v)
        ]
        if undefined:
            why = []
            if n == 0:
                why.append("no rows")
            else:
                if counts.n_defect == 0:
                    why.append("no gold defects")
                if counts.n_defect == n:
                    why.append("no gold non-defects")
                if counts.n_flagged == 0:
                    why.append("nothing flagged as defect")
                if counts.n_flagged == n:
                    why.append("everything flagged as defect")
            where = f" for {context}" if context else ""
            warnings.warn(
                f"{', '.join(undefined)} undefined{where} ({'; '.join(why)}; n={n}, n_defect={counts.n_defect}, "
                f"flagged={counts.n_flagged}); returned NaN",
                DegenerateMetricWarning,
                stacklevel=3,
            )
    return m


def _score_array(score: Any, n: int) -> np.ndarray:
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise AdNannyEvalError(f"`score` must be one score per row ({n}), got shape {s.shape}")
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))
        raise AdNannyEvalError(
            f"`score` has {len(bad)} missing or non-finite value(s) (first rows: {bad[:10].tolist()}); "
            "AUC needs a score for every row — drop those rows or pass no score"
        )
    return s


def _auc_sorted_key(t: np.ndarray, s: np.ndarray, n_pos: int, n_neg: int) -> float:
    # Non-negative float64 bits sort like the floats; (bits << 1) | label stays < 2**63 for s < 2.
    key = (s + 0.0).view(np.int64) << 1  # [n] int64; +0.0 turns -0.0 into 0.0
    key |= t
    key.sort()  # by score, negatives (label 0) before positives within a tie
    n = key.shape[0]
    # Runs of equal keys: u runs, each one (score, label); everything below is O(u).
    starts = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts = np.concatenate(([0], starts))  # [u] first position of each run
    counts = np.diff(starts, append=n)  # [u]
    ukey = key[starts]  # [u]
    is_pos = (ukey & 1).astype(bool)
    # Sum over positives of #negatives with score <= theirs = sum of positive positions - C(n_pos, 2).
    ps, pc = starts[is_pos], counts[is_pos]
    le = int(((2 * ps + pc - 1) * pc).sum()) // 2 - n_pos * (n_pos - 1) // 2
    # A positive run right after the negative run of the same score: those pairs are ties, worth 1/2.
    tied = np.flatnonzero(is_pos[1:] & (ukey[1:] == ukey[:-1] + 1)) + 1
    tie_pairs = int((counts[tied] * counts[tied - 1]).sum())
    return (le - 0.5 * tie_pairs) / (n_pos * n_neg)


def _auc_argsort(t: np.ndarray, s: np.ndarray, n_pos: int, n_neg: int) -> float:
    order = np.argsort(s, kind="stable")
    ss = s[order]
    tt = t[order]
    ends = np.append(np.flatnonzero(ss[1:] != ss[:-1]), ss.shape[0] - 1)
    pos_cum = np.cumsum(tt, dtype=np.int64)[ends]
    pos_g = np.diff(pos_cum, prepend=0)
    size_g = np.diff(ends, prepend=-1)
    neg_g = size_g - pos_g
    neg_below = np.cumsum(neg_g) - neg_g
    num = float((pos_g * neg_below).sum()) + 0.5 * float((pos_g * neg_g).sum())
    return num / (n_pos * n_neg)


def roc_auc(y_true: Any, score: Any, *, warn: bool = True) -> float:
    """ROC AUC of `score` (higher = more likely non-defect) against `y_true` (True = non-defect).

    Ties count ½, exactly like ``sklearn.metrics.roc_auc_score``; NaN (with a warning) for one gold class.
    """
    t = _as_bool("y_true", y_true)
    s = _score_array(score, t.shape[0])
    n_pos = int(np.count_nonzero(t))
    n_neg = int(t.shape[0]) - n_pos
    if n_pos == 0 or n_neg == 0:
        if warn:
            warnings.warn(
                f"AUC undefined: gold has only one class (n_non_defect={n_pos}, n_defect={n_neg}); returned NaN",
                DegenerateMetricWarning,
                stacklevel=2,
            )
        return math.nan
    if s.size and s.min() >= 0.0 and s.max() < 2.0:
        return _auc_sorted_key(t, s, n_pos, n_neg)
    return _auc_argsort(t, s, n_pos, n_neg)


def binary_metrics(y_true: Any, y_pred: Any, score: Any | None = None, *, warn: bool = True) -> BinaryMetrics:
    """All metrics for boolean `y_true`/`y_pred` (True = non-defect); AUC too when `score` is given."""
    counts = confusion_counts(y_true, y_pred)
    auc = None
    if score is not None:
        auc = roc_auc(y_true, score, warn=False)
    return metrics_from_counts(counts, auc, warn=warn)


def balanced_accuracy(y_true: Any, y_pred: Any, *, warn: bool = True) -> float:
    """BACC = mean of the two recalls (the paper's primary metric; sft's task weights read it)."""
    return metrics_from_counts(confusion_counts(y_true, y_pred), warn=warn).bacc


def bacc_from_counts(tp: Any, fn: Any, fp: Any, tn: Any) -> np.ndarray:
    """Vectorized BACC over arrays of counts (bootstrap resamples); NaN where a gold class is empty."""
    tp, fn, fp, tn = (np.asarray(x, dtype=np.float64) for x in (tp, fn, fp, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        neg = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
    return (pos + neg) / 2
