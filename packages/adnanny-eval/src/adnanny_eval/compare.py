"""Candidate vs baseline on one dataset under one view: both metric rows, the Delta row, bootstrap CIs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.bootstrap import BootstrapCI, paired_bootstrap_bacc
from adnanny_eval.errors import AdNannyEvalError, ScoreSourceWarning
from adnanny_eval.evaluate import prepare
from adnanny_eval.io import join_on_id
from adnanny_eval.metrics import COUNT_KEYS, METRIC_NAMES, BinaryMetrics
from adnanny_eval.predictions import (
    LABEL_PROBS_COL,
    PARSE_ERROR_COL,
    ScoreChoice,
    parse_error_mask,
    resolve_score,
)
from adnanny_eval.views import View, get_view, implicit_score_column

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
    parse_errors: str = "wrong"  # how unparsed predictions were counted: "wrong" or "drop"
    extra: dict[str, Any] = field(default_factory=dict)  # auc_source per model, notes

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
            if k in base and k not in COUNT_KEYS and k != self.view.rate_name
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
            "parse_errors": self.parse_errors,
            "n_dropped": self.candidate.n_dropped,
            "candidate_name": self.candidate_name,
            "candidate": clean(self.candidate.to_paper(self.view.rate_name)),
        }
        if self.baseline is not None:
            out["baseline_name"] = self.baseline_name
            out["baseline"] = clean(self.baseline.to_paper(self.view.rate_name))
            out["delta"] = clean(self.delta())
        if self.ci is not None:
            out["bootstrap"] = self.ci.to_dict()
        out.update(self.extra)
        return out


def compare_dataset(
    dataset: str,
    view: str | View,
    gold: Any,
    candidate: Any,
    baseline: Any | None = None,
    *,
    defect: str | Sequence[Any] | None = None,
    field: str | None = None,
    values: str | Sequence[Any] | None = None,
    rate_name: str | None = None,
    candidate_score: Any | None = None,
    baseline_score: Any | None = None,
    candidate_unparsed: Any | None = None,
    baseline_unparsed: Any | None = None,
    parse_errors: str = "wrong",
    ids: Any | None = None,
    candidate_name: str = "candidate",
    baseline_name: str = "baseline",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    sources: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> DatasetComparison:
    """Compare raw candidate (and baseline) labels with raw gold labels, rows already aligned.

    `view` as in `evaluate` (a name, a `View`, or ``"defect"`` with `defect` values). A missing predicted
    label or a row marked in `*_unparsed` is a parse error, handled by `parse_errors` (``wrong``: a miss of
    its gold class; ``drop``: the row leaves gold and *both* models, so the pairing stays on the same ids).
    Scores are each model's P(non-defect) for this view, in [0, 1]. BACC CIs come from a paired bootstrap
    with `n_resamples` draws from `seed` (0 resamples: no CIs), on the rows the metrics cover.
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
    v = get_view(view, defect=defect, field=field, values=values, rate_name=rate_name)
    with_base = baseline is not None
    prep = prepare(
        gold,
        [candidate, baseline] if with_base else [candidate],
        v,
        unparsed=[candidate_unparsed, baseline_unparsed] if with_base else [candidate_unparsed],
        scores=[candidate_score, baseline_score] if with_base else [candidate_score],
        ids=ids,
        parse_errors=parse_errors,
        names=[src["candidate"], src["baseline"]] if with_base else [src["candidate"]],
        score_names=[src["candidate_score"], src["baseline_score"]]
        if with_base
        else [src["candidate_score"]],
        gold_name=src["gold"],
    )
    # The warning names the model, dataset and view, so a NaN in a table can be traced.
    cand_m = prep.metrics(0, context=f"{candidate_name} on {dataset} ({v.name} view)")
    base_m = prep.metrics(1, context=f"{baseline_name} on {dataset} ({v.name} view)") if with_base else None
    ci = None
    if n_resamples > 0 and prep.y_true.shape[0] > 0:
        ci = paired_bootstrap_bacc(
            prep.y_true,
            prep.preds[0],
            prep.preds[1] if with_base else None,
            n_resamples=n_resamples,
            seed=seed,
            level=level,
        )
    return DatasetComparison(
        dataset=dataset,
        view=v,
        candidate=cand_m,
        baseline=base_m,
        ci=ci,
        candidate_name=candidate_name,
        baseline_name=baseline_name,
        parse_errors=prep.parse_errors,
        extra=dict(extra or {}),
    )


def compare_tables(
    dataset: str,
    view: str | View,
    gold: pl.DataFrame,
    candidate: pl.DataFrame,
    baseline: pl.DataFrame | None = None,
    *,
    defect: str | Sequence[Any] | None = None,
    field: str | None = None,
    values: str | Sequence[Any] | None = None,
    rate_name: str | None = None,
    gold_col: str | None = None,
    pred_col: str | None = None,
    score_col: str | None = None,
    ignore_score: bool = False,
    parse_errors: str = "wrong",
    sources: Mapping[str, str] | None = None,
    candidate_name: str = "candidate",
    baseline_name: str = "baseline",
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> DatasetComparison:
    """`compare_dataset` on whole tables: join each prediction table to `gold` on `id`, then compare.

    Label columns default to the view's field (``label``; ``location_label`` for the location view; `field`
    for a generic view). Each prediction table follows the predictions-file contract: rows whose
    ``parse_error`` is set (or whose label is null) are parse errors (`parse_errors`), and AUC reads
    P(non-defect) *of this view*: from ``label_probs`` when present (for the fair view: P(good)), else from
    the view's own score column (``score`` for bad/ad-user, ``score_<field>`` for location/quality), else
    it is left out — with a `ScoreSourceWarning` when a score column was there but belongs to another view
    (the fair view never reads the bad view's ``score``). A named `score_col` must exist in the candidate
    table and must not be another view's column (both are errors naming it); a baseline without it just
    gets no AUC. `ignore_score` drops AUC. `sources` names the tables in errors (keys ``gold``,
    ``candidate``, ``baseline``; file paths in the CLI). Both joins come back in gold order, so candidate
    and baseline rows pair up for the bootstrap.
    """
    v = get_view(view, defect=defect, field=field, values=values, rate_name=rate_name)
    gcol = gold_col or v.field
    pcol = pred_col or v.field
    names = {"gold": "gold", "candidate": candidate_name, "baseline": baseline_name, **(sources or {})}

    def join(pred: pl.DataFrame, role: str) -> tuple[Any, np.ndarray, ScoreChoice]:
        explicit = None if ignore_score else score_col
        no_auc = ignore_score
        if explicit is not None and role == "baseline" and explicit not in pred.columns:
            explicit, no_auc = None, True  # a baseline without the named column gets no AUC
        own = None if no_auc else (explicit or implicit_score_column(v))
        joined = join_on_id(
            gold,
            pred,
            gold_col=gcol,
            pred_col=pcol,
            score_col=own,
            gold_name=names["gold"],
            pred_name=names[role],
            require_score=explicit is not None,
            extra=[c for c in (PARSE_ERROR_COL, LABEL_PROBS_COL) if c in pred.columns and c != pcol],
        )
        unparsed = parse_error_mask(joined.extra.get(PARSE_ERROR_COL), len(joined.ids))
        unparsed |= joined.pred.is_null().to_numpy()
        if no_auc:
            return joined, unparsed, ScoreChoice(None, None)
        columns = dict(joined.extra)
        if joined.score is not None and own is not None:
            columns[own] = joined.score
        choice = resolve_score(
            columns,
            v,
            present=list(pred.columns),
            explicit=explicit,
            unparsed=unparsed,
            ids=joined.ids,
            source=names[role],
        )
        if choice.note:
            warnings.warn(choice.note, ScoreSourceWarning, stacklevel=3)
        return joined, unparsed, choice

    jc, uc, sc = join(candidate, "candidate")
    jb, ub, sb = (None, None, None) if baseline is None else join(baseline, "baseline")
    score_names = {
        "candidate_score": f"{names['candidate']}:{sc.source or 'score'}",
        "baseline_score": f"{names['baseline']}:{(sb.source if sb else None) or 'score'}",
    }
    return compare_dataset(
        dataset,
        v,
        jc.gold,
        jc.pred,
        None if jb is None else jb.pred,
        candidate_score=sc.score,
        baseline_score=None if sb is None else sb.score,
        candidate_unparsed=uc,
        baseline_unparsed=ub,
        parse_errors=parse_errors,
        ids=jc.ids,
        candidate_name=candidate_name,
        baseline_name=baseline_name,
        n_resamples=n_resamples,
        seed=seed,
        level=level,
        sources={
            "gold": f"{names['gold']}:{gcol}",
            "candidate": f"{names['candidate']}:{pcol}",
            "baseline": f"{names['baseline']}:{pcol}",
            **score_names,
        },
        extra={
            "auc_source": {"candidate": sc.source, **({} if sb is None else {"baseline": sb.source})},
            "notes": [n for n in (sc.note, None if sb is None else sb.note) if n],
        },
    )
