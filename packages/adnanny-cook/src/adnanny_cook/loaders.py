"""Loaders for users' own labeled data (CSV, JSONL, Parquet, JSON) with a column mapping and schema checks.

Files are read by `adnanny_cook.inputs.iter_rows` (the one reader; it streams in chunks). A row is bad when a
required input field is missing/blank, or a label of the dataset's label fields is missing or outside the
task's label set after `label_map`. With `on_bad_row="error"` the loader raises one `BadRowError` naming the
file and the offending rows and columns; with `"quarantine"` bad rows come back separately with their reasons
(the pipeline writes them to `rejects.jsonl`). Nothing is dropped silently.

Label fields of a dataset: `labels` when given (`--labels label`), else the task's required label fields plus
each optional one that some row of the file gives (a file with only `label` is a relevance-only `query_ad`
set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_cook.errors import BadRowError, ParseError
from adnanny_cook.inputs import iter_rows, read_table
from adnanny_cook.tasks import TaskSpec, load_task

__all__ = ["Dataset", "Item", "dataset_labels", "load_dataset", "load_items", "read_table"]


@dataclass(frozen=True)
class Item:
    id: str
    input: dict[str, Any]
    labels: dict[str, Any] | None   # None: a generation task whose output must be generated first
    split: str | None = None        # the row's own split ("train"/"eval") when a `split_column` is read


@dataclass(frozen=True)
class Dataset:
    """Validated rows of one file: the task restricted to the dataset's label fields, items and rejects."""

    spec: TaskSpec
    items: list[Item]
    rejects: list[dict[str, Any]]
    rows_read: int


#: Values a user's split column may hold -> the corpus split.
_SPLIT_NAMES = {"train": "train", "eval": "eval", "test": "eval", "val": "eval", "valid": "eval",
                "validation": "eval", "dev": "eval"}


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _flatten(r: dict[str, Any]) -> dict[str, Any]:
    # golden-style rows keep fields in nested `input` / `labels` objects
    if isinstance(r.get("input"), dict):
        return {**r, **r["input"], **(r.get("labels") or {})}
    return r


def dataset_labels(spec: TaskSpec, present: Sequence[str], labels: Sequence[str] | None = None) -> TaskSpec:
    """`spec` restricted to the dataset's label fields: `labels` if given, else the required fields plus the
    optional ones among `present` (the fields some row of the file gives)."""
    if labels:
        return spec.select_labels(tuple(labels))
    keep = [f for f in spec.label_fields if f not in spec.optional_labels or f in present]
    return spec.select_labels(tuple(keep))


def load_dataset(path: str | Path, task: str | TaskSpec, *, columns: Mapping[str, str] | None = None,
                 id_column: str = "id", on_bad_row: str = "error", limit: int = 0,
                 labels: Sequence[str] | None = None, split_column: str = "") -> Dataset:
    """Read, map (`columns`, `label_map`) and validate the rows of `path` for `task` (see the module docstring)."""
    base = load_task(task)
    cols = dict(columns or {})
    flat: list[dict[str, Any]] = []
    for chunk in iter_rows(path, columns=cols):
        flat.extend(_flatten(r) for r in chunk)
        if limit and len(flat) >= limit:
            flat = flat[:limit]
            break
    present = {k for r in flat[:1024] for k in r}
    # an optional label field belongs to the dataset when some row gives it (an all-empty exported column does
    # not make every row bad)
    given = [f for f in base.optional_labels if any(not _blank(r.get(f)) for r in flat)]
    spec = dataset_labels(base, given, labels)
    if flat and split_column and split_column not in present:
        raise BadRowError(f"input file `{path}` has no split column `{split_column}`; the file has columns "
                          f"{sorted(present)}")
    if flat:
        absent = [f for f in spec.required_inputs if f not in present]
        if absent:
            shown = [cols.get(f, f) for f in absent]
            raise BadRowError(f"input file `{path}` has no column(s) {shown} needed by task `{spec.name}`; map "
                              f"them with `columns` (task field -> your column), e.g. --columns "
                              f"{absent[0]}=your_column; the file has columns {sorted(present)}")
    items: list[Item] = []
    rejects: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, r in enumerate(flat):
        rid = str(r.get(id_column)) if r.get(id_column) is not None else f"row{n}"
        reasons = []
        inp = {f: r.get(f) for f in spec.input_fields}
        for f in spec.missing_inputs(inp):
            reasons.append(f"column `{cols.get(f, f)}` (field `{f}`) is missing or empty")
        given = {f: r.get(f) for f in spec.label_fields}
        # generation tasks: no output field at all = "generate it"; some but not all = a bad row (never a
        # silent fall-back to generation that would discard the outputs the row does carry)
        generate = spec.kind == "generation" and all(map(_blank, given.values()))
        lab: dict[str, Any] | None = None if generate else {}
        for f, v in ({} if generate else given).items():
            c = cols.get(f, f)
            if _blank(v):
                hint = (" (generation rows give every output field or none)" if spec.kind == "generation" else
                        f" (the dataset's label fields are {list(spec.label_fields)}; choose them with --labels)")
                reasons.append(f"label column `{c}` is missing or empty{hint}")
                continue
            try:
                lab[f] = spec.map_label(f, v)  # type: ignore[index]
            except ParseError:
                allowed = spec.label_fields[f]
                mapped = f" or a `label_map` key {sorted(spec.label_map[f])}" if spec.label_map.get(f) else ""
                reasons.append(f"label column `{c}` has {v!r}, not in "
                               f"{list(allowed) if allowed else 'text'}{mapped}")
        split = None
        if split_column:
            sv = r.get(split_column)
            split = _SPLIT_NAMES.get(str(sv).strip().lower()) if not _blank(sv) else None
            if split is None:
                reasons.append(f"split column `{split_column}` has {sv!r}; expected one of {sorted(_SPLIT_NAMES)}")
        if rid in seen:
            reasons.append(f"duplicate id {rid!r} in column `{id_column}`")
        seen.add(rid)
        if reasons:
            rejects.append({"row": n, "id": rid, "reasons": reasons,
                            "data": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                                     for k, v in r.items()}})
            continue
        items.append(Item(rid, {k: ("" if v is None else str(v)) for k, v in inp.items()}, lab, split))
    if rejects and on_bad_row == "error":
        shown = "\n  ".join(f"row {x['row']} (id={x['id']!r}): " + "; ".join(x["reasons"]) for x in rejects[:20])
        more = f"\n  ... and {len(rejects) - 20} more" if len(rejects) > 20 else ""
        raise BadRowError(f"{len(rejects)} bad row(s) in `{path}` for task `{spec.name}`:\n  {shown}{more}\nFix "
                          f"them, or pass --on-bad-row quarantine to write them to rejects.jsonl and cook the rest.",
                          row=rejects[0]["row"], reasons=rejects[0]["reasons"])
    return Dataset(spec, items, rejects, len(flat))


def load_items(path: str | Path, task: str | TaskSpec, *, columns: Mapping[str, str] | None = None,
               id_column: str = "id", on_bad_row: str = "error", limit: int = 0,
               labels: Sequence[str] | None = None) -> tuple[list[Item], list[dict[str, Any]]]:
    """Rows of `path` as task `Item`s plus the quarantined rows (each with `row`, `id`, `reasons`)."""
    ds = load_dataset(path, task, columns=columns, id_column=id_column, on_bad_row=on_bad_row, limit=limit,
                      labels=labels)
    return ds.items, ds.rejects
