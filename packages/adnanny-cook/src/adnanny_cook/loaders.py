"""Loaders for users' own labeled data (Parquet, CSV, JSONL/JSON) with a column mapping and schema checks.

A row is bad when an input field is missing/blank or a label is outside the task's label set. With
`on_bad_row="error"` the loader raises one `BadRowError` naming the file and the offending rows and columns;
with `"quarantine"` bad rows come back separately with their reasons (the pipeline writes them to
`rejects.jsonl`). Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_cook.errors import BadRowError, ParseError
from adnanny_cook.tasks import get_task

__all__ = ["Item", "load_items", "read_table"]


@dataclass(frozen=True)
class Item:
    id: str
    input: dict[str, Any]
    labels: dict[str, Any] | None   # None: a generation task whose output must be generated first


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def read_table(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise BadRowError(f"input file `{p}` does not exist")
    suf = p.suffix.lower()
    try:
        if suf == ".parquet":
            import polars as pl

            return pl.read_parquet(p).to_dicts()
        if suf == ".csv":
            import polars as pl

            return pl.read_csv(p, infer_schema_length=0).to_dicts()  # all strings: labels parse per task
        if suf in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise BadRowError(f"`{p}` line {n} is not valid JSON: {e}", row=n) from None
            return rows
        if suf == ".json":
            data = json.loads(p.read_text())
            if not isinstance(data, list):
                raise BadRowError(f"`{p}` must hold a JSON list of objects")
            return data
    except BadRowError:
        raise
    except Exception as e:
        raise BadRowError(f"cannot read input file `{p}`: {e}") from e
    raise BadRowError(f"input file `{p}` has unsupported suffix {suf!r}; use .parquet, .csv, .jsonl or .json")


def load_items(path: str | Path, task: str, *, columns: Mapping[str, str] | None = None, id_column: str = "id",
               on_bad_row: str = "error", limit: int = 0) -> tuple[list[Item], list[dict[str, Any]]]:
    """Rows of `path` as task `Item`s plus the quarantined rows (each with `row`, `id`, `reasons`)."""
    spec = get_task(task)
    cols = dict(columns or {})
    rows = read_table(path)
    if limit:
        rows = rows[:limit]
    # golden-style rows keep fields in nested `input` / `labels` objects
    flat = []
    for r in rows:
        if isinstance(r.get("input"), dict):
            r = {**r, **r["input"], **(r.get("labels") or {})}
        flat.append(r)
    if flat:
        needed = [cols.get(f, f) for f in spec.input_fields]
        absent = [c for c in needed if all(c not in r for r in flat)]
        if absent:
            raise BadRowError(f"input file `{path}` has no column(s) {absent} needed by task `{task}`; map them "
                              f"with `columns` (task field -> your column), e.g. columns = {{ query = \"q\" }}")
    items: list[Item] = []
    rejects: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, r in enumerate(flat):
        rid = str(r.get(id_column)) if r.get(id_column) is not None else f"row{n}"
        reasons = []
        inp = {f: r.get(cols.get(f, f)) for f in spec.input_fields}
        for f in spec.missing_inputs(inp):
            reasons.append(f"column `{cols.get(f, f)}` (field `{f}`) is missing or empty")
        given = {f: r.get(cols.get(f, f)) for f in spec.label_fields}
        # generation tasks: no output field at all = "generate it"; some but not all = a bad row (never a
        # silent fall-back to generation that would discard the outputs the row does carry)
        generate = spec.kind == "generation" and all(map(_blank, given.values()))
        labels: dict[str, Any] | None = None if generate else {}
        for f, v in ({} if generate else given).items():
            c = cols.get(f, f)
            if _blank(v):
                hint = " (generation rows give every output field or none)" if spec.kind == "generation" else ""
                reasons.append(f"label column `{c}` is missing or empty{hint}")
                continue
            try:
                labels[f] = spec.check_value(f, v)  # type: ignore[index]
            except ParseError:
                allowed = spec.label_fields[f]
                reasons.append(f"label column `{c}` has {v!r}, not in {list(allowed) if allowed else 'text'}")
        if rid in seen:
            reasons.append(f"duplicate id {rid!r} in column `{id_column}`")
        seen.add(rid)
        if reasons:
            rejects.append({"row": n, "id": rid, "reasons": reasons,
                            "data": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
                                     for k, v in r.items()}})
            continue
        items.append(Item(rid, {k: str(v) for k, v in inp.items()}, labels))
    if rejects and on_bad_row == "error":
        shown = "\n  ".join(f"row {x['row']} (id={x['id']!r}): " + "; ".join(x["reasons"]) for x in rejects[:20])
        more = f"\n  ... and {len(rejects) - 20} more" if len(rejects) > 20 else ""
        raise BadRowError(f"{len(rejects)} bad row(s) in `{path}` for task `{task}`:\n  {shown}{more}\nFix them, or "
                          f"pass --on-bad-row quarantine to write them to rejects.jsonl and cook the rest.",
                          row=rejects[0]["row"], reasons=rejects[0]["reasons"])
    return items, rejects
