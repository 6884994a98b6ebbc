"""Paired bootstrap confidence intervals for BACC and its candidate − baseline delta (not in the paper).

Resampling n rows with replacement only matters through how many rows land in each joint cell
(gold, candidate, baseline) — 8 cells, since every label is binary under a view. The bootstrap counts of
those cells are exactly Multinomial(n, observed cell shares), so we draw the B×8 count matrix directly:
the same distribution as index resampling, fully vectorized, O(B) instead of O(B·n), and paired because
both models are scored on the same draw. CIs are percentile intervals; resamples where a gold class is
empty (BACC undefined) are dropped and counted in `n_degenerate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.metrics import bacc_from_counts

__all__ = ["BootstrapCI", "paired_bootstrap_bacc"]


@dataclass(frozen=True)
class BootstrapCI:
    """Percentile intervals (fractions) for BACC of each model and of candidate − baseline."""

    n_resamples: int
    seed: int
    level: float
    candidate: tuple[float, float]
    baseline: tuple[float, float] | None
    delta: tuple[float, float] | None
    n_degenerate: int
    method: str = "paired percentile bootstrap (multinomial over joint gold/candidate/baseline cells)"

    def to_dict(self, *, percent: bool = True) -> dict[str, Any]:
        """JSON-ready dict (percent by default); NaN bounds become None."""
        scale = 100.0 if percent else 1.0
        out = asdict(self)
        for key in ("candidate", "baseline", "delta"):
            if out[key] is not None:
                out[key] = [None if math.isnan(x) else x * scale for x in out[key]]
        return out


def _quantiles(values: np.ndarray, level: float) -> tuple[float, float]:
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(ok, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def paired_bootstrap_bacc(
    y_true: Any,
    candidate: Any,
    baseline: Any | None = None,
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapCI:
    """Bootstrap BACC CIs for boolean arrays (True = non-defect); paired with `baseline` when given."""
    if n_resamples < 1:
        raise AdNannyEvalError(f"`n_resamples` must be >= 1, got {n_resamples}")
    if not 0 < level < 1:
        raise AdNannyEvalError(f"`level` must be in (0, 1), got {level}")
    t = np.asarray(y_true, dtype=bool)
    c = np.asarray(candidate, dtype=bool)
    b = np.zeros_like(t) if baseline is None else np.asarray(baseline, dtype=bool)
    if not (t.shape == c.shape == b.shape):
        raise AdNannyEvalError(
            f"`y_true`, `candidate`, `baseline` must align, got {t.shape}, {c.shape}, {b.shape}"
        )
    n = int(t.shape[0])
    if n == 0:
        raise AdNannyEvalError("cannot bootstrap an empty dataset (`y_true` has 0 rows)")
    cell = (t.astype(np.int8) << 2) | (c.astype(np.int8) << 1) | b.astype(np.int8)  # [n] in 0..7
    counts = np.bincount(cell, minlength=8)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_resamples)  # [B, 8]
    g1, g0 = draws[:, 4:], draws[:, :4]  # gold non-defect / defect; columns (c, b) = 00, 01, 10, 11

    def bacc(pred_bit: int) -> np.ndarray:
        cols1 = [i for i in range(4) if (i >> pred_bit) & 1]
        cols0 = [i for i in range(4) if not (i >> pred_bit) & 1]
        tp = g1[:, cols1].sum(1)
        fn = g1[:, cols0].sum(1)
        fp = g0[:, cols1].sum(1)
        tn = g0[:, cols0].sum(1)
        return bacc_from_counts(tp, fn, fp, tn)

    cand = bacc(1)
    n_degenerate = int(np.isnan(cand).sum())
    if baseline is None:
        return BootstrapCI(n_resamples, seed, level, _quantiles(cand, level), None, None, n_degenerate)
    base = bacc(0)
    return BootstrapCI(
        n_resamples,
        seed,
        level,
        _quantiles(cand, level),
        _quantiles(base, level),
        _quantiles(cand - base, level),
        n_degenerate,
    )
