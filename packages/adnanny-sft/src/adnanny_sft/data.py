"""Training rows: reading a cook corpus, and deriving the two target forms of labeling tasks.

A row is a dict with at least ``id``, ``task``, ``messages`` (prompt only) and ``target`` — the corpus schema
of ``adnanny_cook.corpus`` — so any frame with those columns trains.

Two target forms (paper §3/§5.5; adnanny-serve's two modes): for a cook task (labeling tasks, and generation
tasks alike, whose "label" is the generated text), the prompt's output instruction chooses label+reasoning (``<think>…</think>`` then tags) or label-only (tags alone). The prompt
and target of each form are rendered by the task's own ``render_messages(input, mode)`` /
``format_target(labels, reasoning)`` (adnanny_cook.tasks), so training and serving prompts cannot drift
apart. A row already in a requested form is used as written; the other form is derived from its ``input``
and ``labels`` (a label-only row cannot yield a reasoning target: it is counted as skipped, not invented).
Rows of other tasks (public instruction data) keep their single form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adnanny_sft.errors import ConfigError, DataError

__all__ = ["FORMS", "read_rows", "with_target_forms"]

FORMS = ("reasoning", "label")


def read_rows(path: str | Path, *, split: str | None = "train") -> list[dict[str, Any]]:
    """Rows of a cook corpus (Parquet file or directory, validated by ``adnanny_cook.corpus.read_corpus``).

    ``split`` keeps only rows of that split (``None`` keeps all).
    """
    from adnanny_cook.corpus import read_corpus

    p = Path(path)
    if not p.exists():
        raise DataError(f"corpus `{p}` does not exist; pass the directory or Parquet file cook wrote.")
    df = read_corpus(p)
    if split is not None:
        df = df.filter(df["split"] == split)
    rows = df.to_dicts()
    if not rows:
        raise DataError(f"corpus `{p}` has no rows with split {split!r}.")
    return rows


def _json(row: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    if isinstance(v, Mapping):
        return dict(v)
    if not isinstance(v, str):
        raise DataError(f"row {row.get('id')!r}: column `{key}` must be a JSON object string; got {type(v).__name__}.")
    try:
        out = json.loads(v)
    except json.JSONDecodeError as e:
        raise DataError(f"row {row.get('id')!r}: column `{key}` is not valid JSON ({e}).") from e
    if not isinstance(out, dict):
        raise DataError(f"row {row.get('id')!r}: column `{key}` must hold a JSON object.")
    return out


def _input_key(row: Mapping[str, Any]) -> str:
    v = row.get("input")
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, ensure_ascii=False)


def with_target_forms(
    rows: Iterable[Mapping[str, Any]], forms: Sequence[str] = FORMS
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Expand cook-task rows into the requested target forms; returns (rows, counts).

    Derived rows get the id ``"<id>#<form>"``; a row's own form keeps its id. ``counts`` has ``kept``,
    ``derived``, ``skipped_no_reasoning`` (label-only rows for which a reasoning target was requested and the
    corpus has none) and ``not_requested`` (rows whose own form was not requested).
    """
    from adnanny_cook.tasks import get_task

    forms = tuple(forms)
    rows = [dict(r) for r in rows]
    if not forms or any(f not in FORMS for f in forms) or len(set(forms)) != len(forms):
        raise ConfigError(f"`target_forms` must be a non-empty subset of {list(FORMS)}; got {list(forms)}.")
    out: list[dict[str, Any]] = []
    counts = {"kept": 0, "derived": 0, "skipped_no_reasoning": 0, "not_requested": 0}
    # cook's sample corpus already holds each input in both forms: derive a form only where it is missing
    present = {(r.get("task"), _input_key(r), r.get("mode")) for r in rows}
    for row in rows:
        task = str(row.get("task"))
        try:
            spec = get_task(task)
        except Exception:  # not a cook task (e.g. public instruction data): one form only
            out.append(dict(row))
            counts["kept"] += 1
            continue
        mode = row.get("mode")
        if mode not in forms:
            counts["not_requested"] += 1
        for form in forms:
            if form == mode:
                out.append(dict(row))
                counts["kept"] += 1
                continue
            if (task, _input_key(row), form) in present:
                continue  # the corpus has this form of the input as its own row
            reasoning = row.get("reasoning")
            if form == "reasoning" and not (isinstance(reasoning, str) and reasoning.strip()):
                counts["skipped_no_reasoning"] += 1
                continue
            inp = _json(row, "input")
            labels = _json(row, "labels")
            new = dict(row)
            new["id"] = f"{row['id']}#{form}"
            new["mode"] = form
            new["messages"] = spec.render_messages(inp, form)
            new["target"] = spec.format_target(labels, reasoning if form == "reasoning" else None)
            out.append(new)
            counts["derived"] += 1
    return out, counts
