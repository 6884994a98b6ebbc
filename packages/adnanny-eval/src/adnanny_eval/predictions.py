"""Reading the predictions-file contract: ``parse_error``, ``label_probs`` and which column gives AUC.

A predictions file (what ``adnanny-serve label`` writes) has ``id``, one column per label field, ``score``
(P(non-defect) of the task's primary field under its defect values — the *bad* view for query_ad),
``score_<field>`` for other defect-bearing fields, ``label_probs`` (JSON ``{field: {value: prob}}``) and
``parse_error`` (the parser's message; null when the output parsed). This module turns those columns into
what one view needs:

* the unparsed mask (`parse_error_mask`),
* P(non-defect) of *this* view (`resolve_score`): from ``label_probs`` — the sum of the probabilities of the
  view's non-defect values of its field, so the fair view gets P(good) — else from the view's own score
  column (`implicit_score_column`), else none, with a note when a score column was there but belongs to
  another view (``score`` is the bad view's: reading it for the fair view would report the wrong AUC).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.errors import AdNannyEvalError, LabelError
from adnanny_eval.views import View, format_ids, implicit_score_column, normalize_label, score_column_conflict

__all__ = ["ScoreChoice", "parse_error_mask", "probs_non_defect", "resolve_score"]

PARSE_ERROR_COL = "parse_error"
LABEL_PROBS_COL = "label_probs"


def parse_error_mask(values: pl.Series | None, n: int) -> np.ndarray:
    """[n] bool: True where ``parse_error`` is set (text that is not empty; True; a non-zero number)."""
    if values is None:
        return np.zeros(n, dtype=bool)
    if values.dtype == pl.Boolean:
        return values.fill_null(False).to_numpy().astype(bool)
    if values.dtype.is_numeric():
        return (values.fill_null(0) != 0).to_numpy().astype(bool)
    text = values.cast(pl.String, strict=False)
    return (text.is_not_null() & (text.str.strip_chars() != "")).fill_null(False).to_numpy().astype(bool)


def _as_mapping(item: Any, row: int, ids: Any, what: str) -> Mapping[str, Any] | None:
    if item is None:
        return None
    if isinstance(item, Mapping):
        return item
    if isinstance(item, str):
        if not item.strip():
            return None
        try:
            obj = json.loads(item)
        except json.JSONDecodeError as exc:
            raise LabelError(
                f"`{what}` is not valid JSON on row {format_ids(ids, np.array([row]))}: {exc}; it must be "
                '{"field": {"value": prob}}'
            ) from exc
        if obj is None:
            return None
        if isinstance(obj, Mapping):
            return obj
    raise LabelError(
        f"`{what}` on row {format_ids(ids, np.array([row]))} is {type(item).__name__}, not an object "
        '{"field": {"value": prob}}'
    )


def probs_non_defect(
    values: pl.Series | list[Any],
    view: View,
    *,
    skip: np.ndarray | None = None,
    ids: Any | None = None,
    what: str = LABEL_PROBS_COL,
) -> np.ndarray | None:
    """P(non-defect) per row from ``label_probs``: Σ prob over the view's non-defect values of its field.

    Rows in `skip` (unparsed) are not read (NaN). Returns None when no row has the view's field (the file's
    ``label_probs`` cover other fields only). Raises `LabelError` naming the column and rows for a parsed
    row without probabilities for the field, a value the view does not know, or a probability (or sum)
    outside [0, 1]. Probabilities are summed as given, not renormalized.
    """
    items = values.to_list() if isinstance(values, pl.Series) else list(values)
    n = len(items)
    skip_mask = np.zeros(n, dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
    out = np.full(n, np.nan)
    missing: list[int] = []
    unknown: dict[str, list[int]] = {}
    out_of_range: list[int] = []
    side_of: dict[str, int] = {}
    found = False
    for i, item in enumerate(items):
        if skip_mask[i]:
            continue
        obj = _as_mapping(item, i, ids, what)
        probs = None if obj is None else obj.get(view.field)
        if probs is None:
            missing.append(i)
            continue
        if not isinstance(probs, Mapping):
            raise LabelError(
                f"`{what}`[{view.field!r}] on row {format_ids(ids, np.array([i]))} is "
                f"{type(probs).__name__}, not an object {{value: prob}}"
            )
        found = True
        total = 0.0
        for raw, p in probs.items():
            if p is None:  # a struct column (JSONL) fills values absent on this row with null
                continue
            key = str(raw)
            side = side_of.get(key)
            if side is None:
                side = side_of[key] = view.side(normalize_label(key))
            if side < 0:
                unknown.setdefault(key, []).append(i)
                continue
            try:
                pf = float(p)
            except (TypeError, ValueError):
                pf = math.nan
            if not (math.isfinite(pf) and -1e-6 <= pf <= 1 + 1e-6):
                out_of_range.append(i)
                break
            if side == 1:
                total += pf
        out[i] = total
    if not found:
        return None
    if missing:
        rows = np.array(missing)
        raise LabelError(
            f"`{what}` has no probabilities for `{view.field}` on {len(rows)} parsed row(s) (ids: "
            f"{format_ids(ids, rows)}); every parsed row needs them, or evaluate without AUC (`--no-auc`)"
        )
    if unknown:
        rows = np.array(sorted({r for rs in unknown.values() for r in rs}))
        raise LabelError(
            f"`{what}`[{view.field!r}] has value(s) {sorted(unknown)} that view `{view.name}` does not know "
            f"(ids: {format_ids(ids, rows)}); known labels: {', '.join(view.known)}"
        )
    over = np.flatnonzero(np.isfinite(out) & ((out < -1e-6) | (out > 1 + 1e-6)))
    bad_rows = np.array(sorted(set(out_of_range) | set(over.tolist())), dtype=np.int64)
    if bad_rows.size:
        raise LabelError(
            f"`{what}`[{view.field!r}] has probabilities outside [0, 1] on {bad_rows.size} row(s) (ids: "
            f"{format_ids(ids, bad_rows)}); each value's probability and their sum must be in [0, 1]"
        )
    finite = np.isfinite(out)
    out[finite] = np.clip(out[finite], 0.0, 1.0)
    return out


@dataclass(frozen=True)
class ScoreChoice:
    """Where one model's P(non-defect) for a view came from: the scores, their source, or a note why none."""

    score: np.ndarray | None
    source: str | None  # e.g. "label_probs[label]" or "score"; None: no AUC
    note: str | None = None  # set when a score column was present but could not be used


def resolve_score(
    columns: Mapping[str, pl.Series],
    view: View,
    *,
    present: list[str],
    explicit: str | None,
    unparsed: np.ndarray,
    ids: Any,
    source: str,
) -> ScoreChoice:
    """Pick P(non-defect) for `view` from a joined predictions table's columns (aligned to gold).

    `present` lists the file's columns; `explicit` is a user-named score column (``--score-col``): it must
    exist (the caller checks) and must not belong to another view — `score_column_conflict` — else an error
    naming the column. Without one: ``label_probs`` with the view's field, else the view's own column, else
    none (with a note if ``score``/``score_*`` columns were there but belong to other views).
    """
    if explicit is not None:
        conflict = score_column_conflict(view, explicit)
        if conflict:
            raise AdNannyEvalError(
                f"`{source}:{explicit}` cannot be the AUC score of view `{view.name}`: {conflict}; drop "
                "`--score-col` (AUC then comes from `label_probs` when the file has it) or pass `--no-auc`"
            )
        return ScoreChoice(columns[explicit].to_numpy(), explicit)
    if LABEL_PROBS_COL in columns:
        s = probs_non_defect(
            columns[LABEL_PROBS_COL], view, skip=unparsed, ids=ids, what=f"{source}:{LABEL_PROBS_COL}"
        )
        if s is not None:
            return ScoreChoice(s, f"{LABEL_PROBS_COL}[{view.field}]")
    own = implicit_score_column(view)
    if own is not None and own in columns:
        return ScoreChoice(columns[own].to_numpy(), own)
    others = [c for c in present if c == "score" or c.startswith("score_")]
    if not others:
        return ScoreChoice(None, None)
    why = "; ".join(
        score_column_conflict(view, c) or f"`{c}` is not known to be P(non-defect) of view `{view.name}`"
        for c in others
    )
    has_probs = LABEL_PROBS_COL in present
    lacks = (
        f"its `{LABEL_PROBS_COL}` has no `{view.field}`" if has_probs else f"it has no `{LABEL_PROBS_COL}`"
    )
    return ScoreChoice(
        None,
        None,
        note=(
            f"AUC left out for `{source}` under view `{view.name}`: {lacks}, and {why}. Add `label_probs` "
            "(adnanny-serve writes it), or name a column that is this view's P(non-defect) with `--score-col`"
        ),
    )
