"""Candidate vs baseline on one dataset under one view: both metric rows, the Delta row, bootstrap CIs."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.bootstrap import BootstrapCI, paired_bootstrap_bacc
from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.evaluate import check_scores
from adnanny_eval.io import join_on_id
from adnanny_eval.metrics import (
    METRIC_NAMES,
    BinaryMetrics,
    confusion_counts,
    metrics_from_counts,
    roc_auc,
)
from adnanny_eval.views import View, get_view, to_positive

__all__ = ["DatasetComparison", "compare_dataset", "compare_tables", "table_columns"]


# Table 5 (ad–user) reports a subset of the query–ad columns, plus AUC.
_TABLE5 = frozenset({"Model DR", "BACC", "Acc", "PosAcc", "NegAcc", "AUC"})


def table_columns(view: View, *, with_auc: bool) -> tuple[str, ...]:
    """Metric columns in the paper's order: Tables 1–4 for query–ad views, Table 5 for ad–user.

    The gold rate (DR/RR) is not a column: the paper prints it in the Dataset cell.
    """
    cols = [c for c in METRIC_NAMES[1:] if with_auc or c != "AUC"]
    if view.rate_name == "RR":
        cols = [c for c in cols if c in _TABLE5]
    return tuple(c.replace("DR", view.rate_name) for c in cols)


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
    sources: Mapping[str, str] | None = None,
) -> DatasetComparison:
    """Compare raw candidate (and baseline) labels with raw gold labels, rows already aligned.

    BACC CIs come from a paired bootstrap with `n_resamples` draws from `seed` (0 resamples: no CIs).
    `sources` says how errors name each input (keys ``gold``, ``candidate``, ``baseline``,
    ``candidate_score``, ``baseline_score``; e.g. ``{"gold": "gold.csv:label"}``) so a bad label points at
    its file and column.
    """
    src = {
        "gold": "gold label",
        "candidate": f"{candidate_name} label",
        "baseline": f"{baseline_name} label",
        "candidate_score": f"{candidate_name} score",
        "baseline_score": f"{baseline_name} score",
        **(sources or {}),
    }
    v = get_view(view)
    y = to_positive(gold, v, ids=ids, what=src["gold"])
    c = to_positive(candidate, v, ids=ids, what=src["candidate"])
    if c.shape != y.shape:
        raise AdNannyEvalError(
            f"`candidate` has {c.shape[0]} rows but `gold` has {y.shape[0]}; align them on id"
        )
    context = f"{candidate_name} on {dataset} ({v.name} view)"
    if candidate_score is not None:
        candidate_score = check_scores(candidate_score, ids, what=src["candidate_score"])
    if baseline_score is not None:
        baseline_score = check_scores(baseline_score, ids, what=src["baseline_score"])
    cand_m = _metrics(y, c, candidate_score, context)
    base_m = None
    b = None
    if baseline is not None:
        b = to_positive(baseline, v, ids=ids, what=src["baseline"])
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


def compare_tables(
    dataset: str,
    view: str | View,
    gold: pl.DataFrame,
    candidate: pl.DataFrame,
    baseline: pl.DataFrame | None = None,
    *,
    gold_col: str = "label",
    pred_col: str = "label",
    score_col: str | None = None,
    ignore_score: bool = False,
    sources: Mapping[str, str] | None = None,
    candidate_name: str = "candidate",
    baseline_name: str = "baseline",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> DatasetComparison:
    """`compare_dataset` on whole tables: join each prediction table to `gold` on `id`, then compare.

    `score_col` None means "use ``score`` for AUC when a prediction table has it"; a named `score_col`
    must exist in the candidate table (a typo must not silently drop AUC; a baseline without scores
    just gets no AUC); `ignore_score` drops AUC whatever the tables hold. `sources` names the tables in
    errors (keys ``gold``, ``candidate``, ``baseline``; file paths in the CLI). Both joins come back in
    gold order, so candidate and baseline rows pair up for the bootstrap.
    """
    names = {"gold": "gold", "candidate": candidate_name, "baseline": baseline_name, **(sources or {})}
    col = score_col or "score"

    def join(pred: pl.DataFrame, role: str) -> Any:
        return join_on_id(
            gold,
            pred,
            gold_col=gold_col,
            pred_col=pred_col,
            score_col=None if ignore_score else col,
            gold_name=names["gold"],
            pred_name=names[role],
            require_score=score_col is not None and role == "candidate" and not ignore_score,
        )

    jc = join(candidate, "candidate")
    jb = None if baseline is None else join(baseline, "baseline")
    return compare_dataset(
        dataset,
        view,
        jc.gold,
        jc.pred,
        None if jb is None else jb.pred,
        candidate_score=None if jc.score is None else jc.score.to_numpy(),
        baseline_score=None if jb is None or jb.score is None else jb.score.to_numpy(),
        ids=jc.ids,
        candidate_name=candidate_name,
        baseline_name=baseline_name,
        n_resamples=n_resamples,
        seed=seed,
        level=level,
        sources={
            "gold": f"{names['gold']}:{gold_col}",
            "candidate": f"{names['candidate']}:{pred_col}",
            "baseline": f"{names['baseline']}:{pred_col}",
            "candidate_score": f"{names['candidate']}:{col}",
            "baseline_score": f"{names['baseline']}:{col}",
        },
    )
