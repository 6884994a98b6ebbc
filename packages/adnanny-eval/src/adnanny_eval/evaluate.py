"""Evaluate predicted labels against gold labels under one defect view (the library face of `report`)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from adnanny_eval.errors import LabelError
from adnanny_eval.io import join_on_id, read_table
from adnanny_eval.metrics import BinaryMetrics, binary_metrics
from adnanny_eval.views import View, format_ids, get_view, to_positive

__all__ = ["check_scores", "evaluate", "evaluate_files"]


def check_scores(score: Any, ids: Any | None = None, *, what: str = "score") -> np.ndarray:
    """Scores as float64, or a `LabelError` naming the ids whose score is missing or not finite.

    A prediction that failed to parse has no P(non-defect); AUC over the others would silently change the
    population, so the caller has to drop those rows (from gold too) on purpose.
    """
    s = np.asarray(score, dtype=np.float64)
    bad = ~np.isfinite(s)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise LabelError(
            f"`{what}` is missing or not finite for {len(rows)} row(s) (ids: {format_ids(ids, rows)}); drop "
            "those rows from both files, or evaluate without AUC (`--no-auc`)"
        )
    return s


def evaluate(
    gold: Any,
    pred: Any,
    view: str | View,
    *,
    score: Any | None = None,
    ids: Any | None = None,
    warn: bool = True,
) -> BinaryMetrics:
    """Metrics of raw predicted labels `pred` against raw gold labels `gold` under `view`.

    Labels are normalized and mapped by the view (unknown labels raise `LabelError` naming `ids`);
    `score` is P(non-defect) per row and adds AUC.
    """
    v = get_view(view)
    y_true = to_positive(gold, v, ids=ids, what="gold label")
    y_pred = to_positive(pred, v, ids=ids, what="pred label")
    s = None if score is None else check_scores(score, ids)
    return binary_metrics(y_true, y_pred, s, warn=warn)


def evaluate_files(
    gold_path: str | os.PathLike[str],
    pred_path: str | os.PathLike[str],
    view: str | View,
    *,
    gold_col: str = "label",
    pred_col: str = "label",
    score_col: str | None = "score",
) -> BinaryMetrics:
    """Read GOLD and PRED (Parquet/CSV/JSONL), join on `id`, and evaluate under `view`."""
    joined = join_on_id(
        read_table(gold_path),
        read_table(pred_path),
        gold_col=gold_col,
        pred_col=pred_col,
        score_col=score_col,
        gold_name=str(gold_path),
        pred_name=str(pred_path),
    )
    score = None if joined.score is None else joined.score.to_numpy()
    return evaluate(joined.gold, joined.pred, view, score=score, ids=joined.ids)
