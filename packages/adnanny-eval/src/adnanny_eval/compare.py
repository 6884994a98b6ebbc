"""Candidate vs baseline on one dataset under one view: both metric rows, the Delta row, bootstrap CIs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adnanny_eval.bootstrap import BootstrapCI, paired_bootstrap_bacc
from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.evaluate import check_scores
from adnanny_eval.metrics import BinaryMetrics, confusion_counts, metrics_from_counts, roc_auc
from adnanny_eval.views import View, get_view, to_positive

__all__ = ["DatasetComparison", "compare_dataset", "table_columns"]


def table_columns(view: View, *, with_auc: bool) -> tuple[str, ...]:
    """Metric columns in the paper's order: Tables 1–4 for query–ad views, Table 5 for ad–user."""
    if view.rate_name == "RR":
        cols: tuple[str, ...] = (view.model_rate_name, "BACC", "Acc", "PosAcc", "NegAcc")
    else:
        cols = (
            view.model_rate_name,
            "BACC",
            "Acc",
            "PosAcc",
            "PosPrec",
            "NegAcc",
            "NegPrec",
            "PosF1",
            "NegF1",
        )
    return cols + (("AUC",) if with_auc else ())


@dataclass(frozen=True)
class DatasetComparison:
    """One dataset's block of a paper table: baseline row, candidate row, Delta row (+ BACC CIs)."""

    dataset: str
    view: View
    candidate: BinaryMetrics
    baseline: BinaryMetrics | None = None
    ci: BootstrapCI | None = None
    candidate_name: str = "candidate"
    baseline_name: str = "baseline"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Gold defect rate (DR/RR) as a fraction — the number in the paper's Dataset cell."""
        return self.candidate.dr

    def delta(self) -> dict[str, float]:
        """Candidate − baseline in percentage points for every metric both rows have."""
        if self.baseline is None:
            raise AdNannyEvalError(f"dataset `{self.dataset}` has no baseline, so it has no Delta row")
        cand = self.candidate.to_paper(self.view.rate_name)
        base = self.baseline.to_paper(self.view.rate_name)
        return {
            k: float(cand[k]) - float(base[k])
            for k in cand
            if k in base and k not in ("n", "n_defect", self.view.rate_name)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (percent, NaN -> None)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}

        out: dict[str, Any] = {
            "dataset": self.dataset,
            "view": self.view.name,
            "rate_name": self.view.rate_name,
            self.view.rate_name: self.rate * 100.0,
            "n": self.candidate.n,
            "n_defect": self.candidate.n_defect,
            "candidate_name": self.candidate_name,
            "candidate": clean(self.candidate.to_paper(self.view.rate_name)),
        }
        if self.baseline is not None:
            out["baseline_name"] = self.baseline_name
            out["baseline"] = clean(self.baseline.to_paper(self.view.rate_name))
            out["delta"] = clean(self.delta())
        if self.ci is not None:
            out["bootstrap"] = self.ci.to_dict()
        return out


def compare_dataset(
    dataset: str,
    view: str | View,
    gold: Any,
    candidate: Any,
    baseline: Any | None = None,
    *,
    candidate_score: Any | None = None,
    baseline_score: Any | None = None,
    ids: Any | None = None,
    candidate_name: str = "candidate",
    baseline_name: str = "baseline",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> DatasetComparison:
    """Compare raw candidate (and baseline) labels with raw gold labels, rows already aligned.

    BACC CIs come from a paired bootstrap with `n_resamples` draws from `seed` (0 resamples: no CIs).
    """
    v = get_view(view)
    y = to_positive(gold, v, ids=ids, what="gold label")
    c = to_positive(candidate, v, ids=ids, what=f"{candidate_name} label")
    if c.shape != y.shape:
        raise AdNannyEvalError(
            f"`candidate` has {c.shape[0]} rows but `gold` has {y.shape[0]}; align them on id"
        )
    context = f"{candidate_name} on {dataset} ({v.name} view)"
    if candidate_score is not None:
        candidate_score = check_scores(candidate_score, ids, what=f"{candidate_name} score")
    if baseline_score is not None:
        baseline_score = check_scores(baseline_score, ids, what=f"{baseline_name} score")
    cand_m = _metrics(y, c, candidate_score, context)
    base_m = None
    b = None
    if baseline is not None:
        b = to_positive(baseline, v, ids=ids, what=f"{baseline_name} label")
        if b.shape != y.shape:
            raise AdNannyEvalError(
                f"`baseline` has {b.shape[0]} rows but `gold` has {y.shape[0]}; align them on id"
            )
        base_m = _metrics(y, b, baseline_score, f"{baseline_name} on {dataset} ({v.name} view)")
    ci = None
    if n_resamples > 0 and y.shape[0] > 0:
        ci = paired_bootstrap_bacc(y, c, b, n_resamples=n_resamples, seed=seed, level=level)
    return DatasetComparison(
        dataset=dataset,
        view=v,
        candidate=cand_m,
        baseline=base_m,
        ci=ci,
        candidate_name=candidate_name,
        baseline_name=baseline_name,
    )


def _metrics(y: np.ndarray, p: np.ndarray, score: Any | None, context: str) -> BinaryMetrics:
    # The warning names the model, dataset and view, so a NaN in a table can be traced.
    auc = None if score is None else roc_auc(y, np.asarray(score, dtype=np.float64), warn=False)
    return metrics_from_counts(confusion_counts(y, p), auc, context=context)
