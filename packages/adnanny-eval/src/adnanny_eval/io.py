"""Reading gold/prediction files, joining them on `id`, and writing outputs atomically.

Formats are chosen by extension: ``.parquet``/``.pq``, ``.csv``, ``.jsonl``/``.ndjson``. Ids are compared as
text, so a CSV that parsed ``17`` as an integer still joins a JSONL that wrote ``"17"``. Every write goes to a
temporary name in the target folder, is fsynced, then renamed over the target, so a crash never leaves a
half-written report.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import polars as pl

from adnanny_eval.errors import MAX_SHOWN, InputFileError, JoinError, shown

__all__ = ["Joined", "atomic_open", "atomic_write_bytes", "atomic_write_text", "join_on_id", "read_table"]


def read_table(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read a Parquet, CSV or JSONL file (by extension) into a DataFrame; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"file `{p}` does not exist; pass an existing Parquet, CSV or JSONL file")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pl.read_parquet(p)
        if suffix == ".csv":
            return pl.read_csv(p, infer_schema_length=10_000)
        if suffix in (".jsonl", ".ndjson"):
            return pl.read_ndjson(p)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputFileError(f"cannot read `{p}` as {suffix[1:]}: {exc}") from exc
    raise InputFileError(
        f"file `{p}` has extension {suffix!r}; use .parquet, .csv or .jsonl (the format is chosen by extension)"
    )


def _require(df: pl.DataFrame, column: str, source: str, flag: str) -> None:
    if column not in df.columns and column == "id" and flag == "id":
        raise InputFileError(
            f"`{source}` has no `id` column (columns: {', '.join(df.columns)}); rows are joined on `id`, "
            "so both files need one"
        )
    if column not in df.columns:
        raise InputFileError(
            f"`{source}` has no column {column!r} (columns: {', '.join(df.columns)}); "
            f"name the right one with `{flag}`"
        )


def _shown(ids: list[str]) -> str:
    return shown([repr(i) for i in ids[:MAX_SHOWN]], len(ids))


def _ids(df: pl.DataFrame, source: str) -> pl.Series:
    ids = df.get_column("id").cast(pl.String)
    if ids.null_count():
        raise JoinError(f"`{source}` has {ids.null_count()} row(s) with an empty `id`; every row needs an id")
    dup = ids.filter(ids.is_duplicated()).unique(maintain_order=True).to_list()
    if dup:
        raise JoinError(f"`{source}` repeats id(s) {_shown(dup)}; each id must appear once")
    return ids


@dataclass(frozen=True)
class Joined:
    """Gold and predicted labels aligned row by row (gold file order)."""

    ids: pl.Series
    gold: pl.Series
    pred: pl.Series
    score: pl.Series | None
    extra: dict[str, pl.Series] = field(default_factory=dict)  # requested `extra` columns of pred, aligned


def join_on_id(
    gold: pl.DataFrame,
    pred: pl.DataFrame,
    *,
    gold_col: str = "label",
    pred_col: str = "label",
    score_col: str | None = "score",
    gold_name: str = "gold",
    pred_name: str = "pred",
    require_score: bool = False,
    extra: Sequence[str] = (),
) -> Joined:
    """Pair gold and prediction rows on `id`; any id present on one side only is an error naming it.

    `score_col` is used when present in `pred` (AUC); `require_score` turns its absence into an error.
    `extra` names further `pred` columns (``parse_error``, ``label_probs``) returned aligned in
    `Joined.extra` when present.
    """
    _require(gold, "id", gold_name, "id")
    _require(pred, "id", pred_name, "id")
    _require(gold, gold_col, gold_name, "--gold-col")
    _require(pred, pred_col, pred_name, "--pred-col")
    has_score = score_col is not None and score_col in pred.columns
    if require_score and not has_score:
        raise InputFileError(
            f"`{pred_name}` has no score column {score_col!r} (columns: {', '.join(pred.columns)}); "
            "pick it with `--score-col`"
        )
    g_ids = _ids(gold, gold_name)
    p_ids = _ids(pred, pred_name)
    # `__row` pins gold file order explicitly: a candidate and a baseline joined separately must line up
    # row for row (the paired bootstrap relies on it), whatever order the join engine emits.
    g = pl.DataFrame({"id": g_ids, "__gold": gold.get_column(gold_col)}).with_row_index("__row")
    cols = {"id": p_ids, "__pred": pred.get_column(pred_col)}
    if has_score:
        cols["__score"] = pred.get_column(score_col).cast(pl.Float64, strict=False)  # type: ignore[arg-type]
    extra_present = [c for c in dict.fromkeys(extra) if c in pred.columns]
    for k, c in enumerate(extra_present):
        cols[f"__extra{k}"] = pred.get_column(c)
    p = pl.DataFrame(cols)
    only_gold = g.join(p, on="id", how="anti").get_column("id").to_list()
    only_pred = p.join(g, on="id", how="anti").get_column("id").to_list()
    if only_gold or only_pred:
        parts = []
        if only_gold:
            parts.append(
                f"{len(only_gold)} id(s) in `{gold_name}` but not in `{pred_name}`: {_shown(only_gold)}"
            )
        if only_pred:
            parts.append(
                f"{len(only_pred)} id(s) in `{pred_name}` but not in `{gold_name}`: {_shown(only_pred)}"
            )
        raise JoinError(
            "gold and predictions do not cover the same ids — "
            + "; ".join(parts)
            + "; evaluate on matching files (filter both to the same ids)"
        )
    joined = g.join(p, on="id", how="left").sort("__row")
    return Joined(
        ids=joined.get_column("id"),
        gold=joined.get_column("__gold"),
        pred=joined.get_column("__pred"),
        score=joined.get_column("__score") if has_score else None,
        extra={c: joined.get_column(f"__extra{k}") for k, c in enumerate(extra_present)},
    )


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success fsync and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically (temp name, fsync, rename); returns the path."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes atomically (temp name, fsync, rename); returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)
