"""One reader for users' own data files: CSV, JSONL (NDJSON), Parquet (and a JSON list), streamed in chunks.

    >>> from adnanny_cook.inputs import iter_rows, parse_columns
    >>> cols = parse_columns("query=search_term,label=esci")      # task field -> file column
    >>> for chunk in iter_rows("train.csv", columns=cols):         # doctest: +SKIP
    ...     ...                                                    # lists of dicts, 1024 rows each

`columns` renames file columns to task fields (`{"query": "search_term"}`: the file's `search_term` arrives as
`query`); other columns pass through unchanged. A mapped column the file does not have is an error naming the
file and the column and listing the file's columns. CSV values arrive as strings (labels are parsed per task, and
ids such as "00123" keep their zeros); JSONL values keep their JSON types; Parquet keeps its column types.

WHY streaming: a labeled file can be far larger than memory needs to be (9k-character descriptions, millions
of rows). CSV and Parquet are read with polars' lazy scan in batches, JSONL line by line; only one chunk of
rows is ever materialized as Python dicts. (`.json`, a single JSON list, has to be parsed whole.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from adnanny_cook.errors import BadRowError, ConfigError

__all__ = ["SUFFIXES", "file_columns", "iter_rows", "parse_columns", "read_table"]

#: File suffixes `iter_rows` reads.
SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".ndjson", ".parquet", ".json")


def parse_columns(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """`"query=search_term,label=esci"` -> `{"query": "search_term", "label": "esci"}` (task field -> column).

    A mapping passes through (as str -> str); None or "" gives {}. A piece without `=`, an empty side or a task
    field given twice raises `ConfigError` naming the piece. serve's `--columns` uses this same function.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    out: dict[str, str] = {}
    for piece in str(text).split(","):
        if not piece.strip():
            continue
        field, sep, col = piece.partition("=")
        field, col = field.strip(), col.strip()
        if not sep or not field or not col:
            raise ConfigError(f"`columns`: {piece.strip()!r} is not `task_field=file_column` (e.g. "
                              f"--columns query=search_term,label=esci)")
        if field in out:
            raise ConfigError(f"`columns`: task field `{field}` is mapped twice ({out[field]!r} and {col!r})")
        out[field] = col
    return out


def _suffix(p: Path) -> str:
    suf = p.suffix.lower()
    if suf not in SUFFIXES:
        raise BadRowError(f"input file `{p}` has unsupported suffix {suf!r}; use one of {list(SUFFIXES)}")
    return suf


def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise BadRowError(f"input file `{p}` does not exist")
    if p.is_dir():
        raise BadRowError(f"input `{p}` is a directory; pass a .csv, .jsonl or .parquet file")
    return p


def file_columns(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a data file (for JSONL: the keys of its first 1,000 rows, in first-seen order)."""
    p = _check_path(path)
    suf = _suffix(p)
    try:
        if suf in (".csv", ".parquet"):
            return list(_scan(p, suf).collect_schema().names())
    except BadRowError:
        raise
    except Exception as e:  # polars raises several types for a malformed file
        raise BadRowError(f"cannot read input file `{p}`: {e}") from e
    seen: dict[str, None] = {}
    for n, chunk in enumerate(_iter_json(p, suf, 1000)):
        for r in chunk:
            seen.update(dict.fromkeys(r))
        if n == 0:
            break
    return list(seen)


def _scan(p: Path, suf: str) -> Any:
    import polars as pl

    if suf == ".csv":
        return pl.scan_csv(p, infer_schema=False)
    return pl.scan_parquet(p)


def _iter_json(p: Path, suf: str, chunk_rows: int) -> Iterator[list[dict[str, Any]]]:
    if suf == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRowError(f"`{p}` is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise BadRowError(f"`{p}` must hold a JSON list of objects")
        for i in range(0, len(data), chunk_rows):
            yield data[i:i + chunk_rows]
        return
    chunk: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise BadRowError(f"`{p}` line {n} is not valid JSON: {e}", row=n) from None
            if not isinstance(rec, dict):
                raise BadRowError(f"`{p}` line {n} is not a JSON object", row=n)
            chunk.append(rec)
            if len(chunk) >= chunk_rows:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def iter_rows(path: str | os.PathLike[str], *, columns: Mapping[str, str] | str | None = None,
              chunk_rows: int = 1024) -> Iterator[list[dict[str, Any]]]:
    """Stream a CSV / JSONL / Parquet (or JSON list) file as chunks of at most `chunk_rows` row dicts.

    `columns` = {task_field: file_column} (or its CLI form "a=b,c=d") renames file columns to task fields; a
    mapped column the file lacks raises `BadRowError` naming the file and column and listing its columns.
    """
    if chunk_rows < 1:
        raise ConfigError(f"`chunk_rows` must be >= 1, got {chunk_rows}")
    cols = parse_columns(columns)
    p = _check_path(path)
    suf = _suffix(p)
    rename = {col: field for field, col in cols.items()}
    if suf in (".csv", ".parquet"):
        try:
            lf = _scan(p, suf)
            have = list(lf.collect_schema().names())
        except Exception as e:
            raise BadRowError(f"cannot read input file `{p}`: {e}") from e
        _check_mapped(p, cols, have)
        if cols:
            import polars as pl

            # unmapped columns pass through; a mapped column replaces a same-named one the file also has
            # (`query=search_term` with a `query` column); one file column may feed two task fields
            keep = [pl.col(c) for c in have if c not in cols and c not in rename]
            lf = lf.select([*keep, *(pl.col(c).alias(f) for f, c in cols.items())])
        try:
            for batch in lf.collect_batches(chunk_size=chunk_rows):
                rows = batch.to_dicts()
                for i in range(0, len(rows), chunk_rows):  # batches may come larger than asked
                    yield rows[i:i + chunk_rows]
        except BadRowError:
            raise
        except Exception as e:
            raise BadRowError(f"cannot read input file `{p}`: {e}") from e
        return
    first = True
    for chunk in _iter_json(p, suf, chunk_rows):
        if first and cols:
            seen: dict[str, None] = {}
            for r in chunk:
                seen.update(dict.fromkeys(r))
            _check_mapped(p, cols, list(seen))
        first = False
        if rename:
            chunk = [_rename(r, cols, rename) for r in chunk]
        yield chunk


def _rename(r: dict[str, Any], cols: Mapping[str, str], rename: Mapping[str, str]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in cols and k not in rename}
    out.update({f: r[c] for f, c in cols.items() if c in r})
    return out


def _check_mapped(p: Path, cols: Mapping[str, str], have: list[str]) -> None:
    absent = [(f, c) for f, c in cols.items() if c not in have]
    if absent:
        what = ", ".join(f"`{c}` (mapped to task field `{f}`)" for f, c in absent)
        raise BadRowError(f"input file `{p}` has no column {what}; its columns are {have}")


def read_table(path: str | os.PathLike[str], *, columns: Mapping[str, str] | str | None = None
               ) -> list[dict[str, Any]]:
    """Every row of a data file as dicts (`iter_rows` collected): for small files such as golden sets."""
    return [r for chunk in iter_rows(path, columns=columns) for r in chunk]
