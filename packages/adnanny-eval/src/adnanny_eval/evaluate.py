"""Evaluate predicted labels against gold labels under one defect view (the library face of `report`).

**Parse errors.** A model that did not answer in the expected format leaves a prediction row with
``parse_error`` set and no label. Dropping such rows by hand makes the metrics cover a biased subset (the
model chose which rows it is scored on), so the default, ``parse_errors="wrong"``, keeps every row and
counts an unparsed one as a **miss of its gold class**: it is predicted as the opposite of its gold side (a
gold defect is passed, a gold non-defect is flagged), and for AUC it gets the opposite side's extreme score
(0 for a gold non-defect, 1 for a gold defect). Every metric then reads "as if the model were wrong there" —
which also means Model DR depends on the gold labels of the unparsed rows. ``parse_errors="drop"`` removes
those rows from gold and from every compared model instead (paired: the same ids for all), and says how
many. Either way the parse-error rate is returned beside the metrics (`BinaryMetrics.parse_error_rate`).
A gold label is never guessed: a missing or unknown gold label is a `LabelError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.errors import AdNannyEvalError, LabelError
from adnanny_eval.metrics import BinaryMetrics, confusion_counts, metrics_from_counts, roc_auc
from adnanny_eval.views import View, format_ids, get_view, predicted_positive, to_positive

__all__ = [
    "PARSE_ERROR_MODES",
    "Prepared",
    "check_parse_errors",
    "check_scores",
    "evaluate",
    "evaluate_files",
    "prepare",
]

PARSE_ERROR_MODES: tuple[str, ...] = ("wrong", "drop")
# Sums of float probabilities may land a hair outside [0, 1]; beyond this it is a wrong column, not rounding.
_SCORE_TOL = 1e-6


def check_parse_errors(mode: str) -> str:
    """The parse-error mode, checked: ``wrong`` (count as misses) or ``drop`` (remove from both sides)."""
    key = str(mode).strip().lower()
    if key not in PARSE_ERROR_MODES:
        raise AdNannyEvalError(
            f"`parse_errors` must be one of {', '.join(PARSE_ERROR_MODES)}, got {mode!r} (wrong: an unparsed "
            "row counts as a miss of its gold class; drop: it is removed from gold and predictions)"
        )
    return key


def check_scores(
    score: Any, ids: Any | None = None, *, what: str = "score", skip: np.ndarray | None = None
) -> np.ndarray:
    """Scores as float64 — P(non-defect), so finite and in [0, 1] — or a `LabelError` naming the rows.

    `skip` marks rows whose score is not read (unparsed predictions; their score is imputed or dropped by
    the parse-error rule). A missing score on any other row is an error: AUC over the rest would silently
    change the population.
    """
    s = np.array(score, dtype=np.float64)  # a copy: callers impute into it
    if s.ndim != 1:
        raise AdNannyEvalError(f"`{what}` must be one score per row, got shape {s.shape}")
    live = np.ones(s.shape, dtype=bool) if skip is None else ~np.asarray(skip, dtype=bool)
    bad = ~np.isfinite(s) & live
    if bad.any():
        rows = np.flatnonzero(bad)
        raise LabelError(
            f"`{what}` is missing or not finite for {len(rows)} row(s) (ids: {format_ids(ids, rows)}); give "
            "every parsed row a score, or evaluate without AUC (`--no-auc`)"
        )
    with np.errstate(invalid="ignore"):
        out = live & ((s < -_SCORE_TOL) | (s > 1 + _SCORE_TOL))
    if out.any():
        rows = np.flatnonzero(out)
        head = ", ".join(f"{s[r]:g}" for r in rows[:5])
        raise LabelError(
            f"`{what}` has {len(rows)} value(s) outside [0, 1] (ids: {format_ids(ids, rows)}; values: {head}"
            f"{', ...' if len(rows) > 5 else ''}); a score is P(non-defect), a probability — pass that "
            "column, not a logit or a label"
        )
    np.clip(s, 0.0, 1.0, out=s, where=live)
    return s


@dataclass(frozen=True)
class Prepared:
    """Gold and each model's predictions as aligned booleans, after the parse-error rule.

    `y_true`, `preds[k]` and `scores[k]` cover the kept rows (all rows under ``wrong``); `n_parse_errors[k]`
    counts model k's unparsed rows among all rows given, `n_dropped` the rows removed (``drop`` only).
    """

    view: View
    y_true: np.ndarray  # [m] bool, True = non-defect
    preds: tuple[np.ndarray, ...]  # per model [m] bool
    scores: tuple[np.ndarray | None, ...]  # per model [m] float64 or None
    n_parse_errors: tuple[int, ...]
    n_dropped: int
    parse_errors: str
    ids: pl.Series | None  # [m] ids of the kept rows (None if no ids were given)

    def metrics(self, k: int = 0, *, warn: bool = True, context: str = "") -> BinaryMetrics:
        """Model k's metrics (AUC when it has scores), with its parse-error counts attached."""
        y, p, s = self.y_true, self.preds[k], self.scores[k]
        auc = None if s is None else roc_auc(y, s, warn=False)
        m = metrics_from_counts(confusion_counts(y, p), auc, warn=warn, context=context)
        return replace(m, n_parse_errors=self.n_parse_errors[k], n_dropped=self.n_dropped)


def _id_series(ids: Any | None) -> pl.Series | None:
    if ids is None or isinstance(ids, pl.Series):
        return ids
    return pl.Series("id", list(ids) if not isinstance(ids, np.ndarray) else ids, strict=False)


def prepare(
    gold: Any,
    preds: Sequence[Any],
    view: View,
    *,
    unparsed: Sequence[Any | None] | None = None,
    scores: Sequence[Any | None] | None = None,
    ids: Any | None = None,
    parse_errors: str = "wrong",
    names: Sequence[str] | None = None,
    score_names: Sequence[str] | None = None,
    gold_name: str = "gold label",
) -> Prepared:
    """Map gold and one or more aligned prediction columns through `view`, then apply the parse-error rule.

    `unparsed[k]` marks model k's rows whose ``parse_error`` is set (a missing label marks a row too);
    `scores[k]` is its P(non-defect) for this view, or None. Under ``drop`` a row unparsed for *any* model
    is removed for all of them, so paired comparisons stay on the same ids. `names`/`score_names` say how
    errors name each column (e.g. ``preds.csv:label``).
    """
    mode = check_parse_errors(parse_errors)
    k_models = len(preds)
    unparsed = list(unparsed) if unparsed is not None else [None] * k_models
    scores = list(scores) if scores is not None else [None] * k_models
    names = (
        list(names)
        if names is not None
        else [f"pred label {k}" if k else "pred label" for k in range(k_models)]
    )
    score_names = list(score_names) if score_names is not None else [f"{n} score" for n in names]
    id_s = _id_series(ids)
    y = to_positive(gold, view, ids=id_s, what=gold_name)
    sides: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for k in range(k_models):
        p, u = predicted_positive(preds[k], view, unparsed=unparsed[k], ids=id_s, what=names[k])
        if p.shape != y.shape:
            raise AdNannyEvalError(
                f"`{names[k]}` has {p.shape[0]} rows but `{gold_name}` has {y.shape[0]}; align them on id"
            )
        sides.append(p)
        masks.append(u)
    n_parse = tuple(int(np.count_nonzero(u)) for u in masks)
    if mode == "wrong":
        keep = None
        skip_rows = masks
    else:
        dropped = np.zeros(y.shape, dtype=bool)
        for u in masks:
            dropped |= u
        keep = ~dropped
        skip_rows = [dropped] * k_models
    checked: list[np.ndarray | None] = []
    for k in range(k_models):
        s = scores[k]
        if s is None:
            checked.append(None)
            continue
        s = check_scores(s, id_s, what=score_names[k], skip=skip_rows[k])
        if s.shape != y.shape:
            raise AdNannyEvalError(f"`{score_names[k]}` has {s.shape[0]} rows but gold has {y.shape[0]}")
        checked.append(s)
    if keep is None:
        # The miss of its gold class: opposite side; for AUC the opposite side's extreme score.
        out_preds = tuple(np.where(u, ~y, p) for p, u in zip(sides, masks, strict=True))
        out_scores = tuple(
            None if s is None else np.where(u, (~y).astype(np.float64), s)
            for s, u in zip(checked, masks, strict=True)
        )
        return Prepared(view, y, out_preds, out_scores, n_parse, 0, mode, id_s)
    rows = np.flatnonzero(keep)
    return Prepared(
        view,
        y[rows],
        tuple(p[rows] for p in sides),
        tuple(None if s is None else s[rows] for s in checked),
        n_parse,
        int(y.shape[0] - rows.shape[0]),
        mode,
        None if id_s is None else id_s.gather(rows),
    )


def evaluate(
    gold: Any,
    pred: Any,
    view: str | View,
    *,
    defect: str | Sequence[Any] | None = None,
    field: str | None = None,
    values: str | Sequence[Any] | None = None,
    rate_name: str | None = None,
    score: Any | None = None,
    ids: Any | None = None,
    unparsed: Any | None = None,
    parse_errors: str = "wrong",
    warn: bool = True,
) -> BinaryMetrics:
    """Metrics of raw predicted labels `pred` against raw gold labels `gold` under `view`.

    `view` is a built-in name, a `View`, or ``"defect"`` with `defect` values (``defect=("bad", "fair")``,
    ``defect=(0,)``; `values`, `rate_name` as in `defect_view`) — the generic view any task's field can use.
    A missing `pred` label (None) or a row marked in `unparsed` is a parse error, handled by `parse_errors`
    (``wrong``: counted as a miss of its gold class; ``drop``: removed); the result carries
    ``n_parse_errors``, ``parse_error_rate`` and ``n_dropped``. Unknown labels raise `LabelError` naming
    `ids`. `score` is P(non-defect) per row *for this view*, in [0, 1], and adds AUC.
    """
    v = get_view(view, defect=defect, field=field, values=values, rate_name=rate_name)
    prep = prepare(
        gold,
        [pred],
        v,
        unparsed=[unparsed],
        scores=[score],
        ids=ids,
        parse_errors=parse_errors,
        score_names=["score"],
    )
    return prep.metrics(0, warn=warn)


def evaluate_files(
    gold_path: str | os.PathLike[str],
    pred_path: str | os.PathLike[str],
    view: str | View,
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
) -> BinaryMetrics:
    """Read GOLD and PRED (Parquet/CSV/JSONL), join on `id`, and evaluate under `view` — what `report` does.

    Label columns default to the view's field. AUC follows the predictions-file contract (see
    `compare_tables`): ``label_probs`` first, else the view's own score column; a named `score_col` must
    exist and must not belong to another view. Parse errors as in `evaluate`.
    """
    from adnanny_eval.compare import compare_tables
    from adnanny_eval.io import read_table

    comp = compare_tables(
        str(gold_path),
        get_view(view, defect=defect, field=field, values=values, rate_name=rate_name),
        read_table(gold_path),
        read_table(pred_path),
        gold_col=gold_col,
        pred_col=pred_col,
        score_col=score_col,
        ignore_score=ignore_score,
        parse_errors=parse_errors,
        sources={"gold": str(gold_path), "candidate": str(pred_path)},
        n_resamples=0,
    )
    return comp.candidate
