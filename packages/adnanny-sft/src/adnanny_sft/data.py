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

Task definitions come from the corpus folder (``tasks/<name>.toml``, written by cook; ``task_specs``), never
from a table here, so a user's own task trains exactly as it was cooked. ``labels`` restricts a labeling task
to some of its label fields (``spec.select_labels``: relevance-only ``query_ad`` asks for and is trained on
``<Label>`` alone); every row of such a task is then re-rendered from its ``input`` and ``labels``, because
its stored prompt asks for the other tags too. WHY: constant auxiliary tags (a location label that is
``good`` on 98% of rows) otherwise take most of the target tokens and let the loss fall while the one label
that matters is still at the prior.

``row_class`` is the class a row is balanced by (``class_balance``): its primary field's value, or just
defect / non-defect.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from adnanny_sft.errors import ConfigError, DataError

__all__ = ["FORMS", "corpus_folder", "read_rows", "row_class", "task_specs", "with_target_forms"]

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


def corpus_folder(path: str | Path) -> Path:
    """The folder that holds a corpus's ``tasks/`` definitions: the corpus directory, or a Parquet file's folder."""
    p = Path(path)
    return p if p.is_dir() else p.parent


def task_specs(corpus: str | Path, names: Iterable[str], *, labels: Sequence[str] = ()) -> dict[str, Any]:
    """{task: TaskSpec} as the corpus was built (``tasks/<name>.toml``; registered built-ins for older
    corpora), labeling tasks restricted to the fields in ``labels`` that they have (none listed: all fields).

    Names that are no cook task (public instruction data) are left out: their rows keep their single form.
    """
    from adnanny_cook.errors import UnknownTaskError
    from adnanny_cook.tasks import load_task_from_dir

    folder = corpus_folder(corpus)
    out: dict[str, Any] = {}
    for name in sorted(set(names)):
        try:
            spec = load_task_from_dir(folder, name)
        except UnknownTaskError:
            continue
        keep = [f for f in spec.label_fields if f in labels] if spec.kind == "label" else []
        if keep:
            try:
                spec = spec.select_labels(keep)
            except Exception as e:  # cook's ConfigError: a required label field was not selected
                raise ConfigError(f"`labels` = {list(labels)} for task `{name}` of `{corpus}`: {e}") from e
        out[name] = spec
    if labels:
        known = {f for s in out.values() if s.kind == "label" for f in s.label_fields}
        every = {f for n in out for f in load_task_from_dir(folder, n).label_fields}
        unknown = sorted(set(labels) - every)
        if unknown:
            raise ConfigError(f"`labels` names {unknown}, a label field of no task in `{corpus}` "
                              f"(their fields: {sorted(every)}; kept: {sorted(known)}).")
    return out


def row_class(row: Mapping[str, Any], spec: Any, by: str = "defect") -> str | None:
    """The class of a labeling row for class balancing: ``by="value"`` its primary field's value,
    ``by="defect"`` ``"defect"``/``"non-defect"``; None for tasks without a primary field."""
    field = getattr(spec, "primary_field", None) if spec is not None else None
    if field is None:
        return None
    value = spec.map_label(field, _json(row, "labels").get(field))
    if by == "value":
        return str(value)
    if by != "defect":
        raise ConfigError(f"`class_balance_by` must be 'defect' or 'value'; got {by!r}.")
    return "defect" if value in spec.defect_values.get(field, ()) else "non-defect"


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


def _render(spec: Any, row: Mapping[str, Any], form: str) -> tuple[list[dict[str, str]], str]:
    """(messages, target) of ``row`` in ``form`` under ``spec`` (labels restricted to the spec's fields)."""
    inp = _json(row, "input")
    labels = {k: v for k, v in _json(row, "labels").items() if k in spec.label_fields}
    reasoning = row.get("reasoning") if form == "reasoning" else None
    return spec.render_messages(inp, form), spec.format_target(labels, reasoning)


def with_target_forms(
    rows: Iterable[Mapping[str, Any]], forms: Sequence[str] = FORMS, *, specs: Mapping[str, Any] | None = None,
    rerender: Iterable[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Expand cook-task rows into the requested target forms; returns (rows, counts).

    ``specs`` are the task definitions to render with (default: the registered tasks); rows of the tasks in
    ``rerender`` are all re-rendered from their ``input``/``labels`` (their stored prompt and target belong to
    another definition, e.g. before ``select_labels``). Derived rows get the id ``"<id>#<form>"``; a row's own
    form keeps its id. ``counts`` has ``kept``, ``derived``, ``skipped_no_reasoning`` (label-only rows for which
    a reasoning target was requested and the corpus has none) and ``not_requested`` (rows whose own form was
    not requested).
    """
    from adnanny_cook.tasks import get_task

    redo = set(rerender)
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
            spec = specs[task] if specs is not None else get_task(task)
        except Exception:  # not a cook task (e.g. public instruction data): one form only
            out.append(dict(row))
            counts["kept"] += 1
            continue
        mode = row.get("mode")
        if mode not in forms:
            counts["not_requested"] += 1
        for form in forms:
            if form == mode:
                kept = dict(row)
                if task in redo:
                    kept["messages"], kept["target"] = _render(spec, row, form)
                out.append(kept)
                counts["kept"] += 1
                continue
            if (task, _input_key(row), form) in present:
                continue  # the corpus has this form of the input as its own row
            reasoning = row.get("reasoning")
            if form == "reasoning" and not (isinstance(reasoning, str) and reasoning.strip()):
                counts["skipped_no_reasoning"] += 1
                continue
            new = dict(row)
            new["id"] = f"{row['id']}#{form}"
            new["mode"] = form
            new["messages"], new["target"] = _render(spec, row, form)
            out.append(new)
            counts["derived"] += 1
    return out, counts
