"""Public instruction data mixed in at a set ratio (Table 8's "+ public finetuned"), and decontamination.

Table 8 shows ads-only SFT costing general ability (avg 0.867 -> 0.819) and a small mixture of public
instruction data restoring it. We provide the mechanism, not a dataset: the user supplies any JSONL or
Parquet file of chat data (a ``messages`` list ending with the assistant turn, or ``prompt``/``response``
columns), and ``public_ratio`` is the fraction of the *final training mix* that is public, i.e.
``n_public = round(r / (1 − r) · n_ads)`` rows drawn without replacement (error if the file has fewer).

Decontamination: the benchmarks in ``/work/shared/data`` (ARC, GSM8K, HellaSwag ...) are test/validation
splits. Any training row (public or ads) sharing a word n-gram (default n = 8, lower-cased alphanumeric
words) with any string field of a benchmark record is refused: by default training stops with an error
naming the rows and the benchmark file (``on_contamination="error"``); with ``"drop"`` the rows are removed,
counted and written out with the matching file and n-gram. Benchmark strings shorter than n words are
compared as whole word sequences only if they have at least ``min_words`` words (short answers like "18" or
"A" would match everything).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adnanny_sft.errors import ConfigError, ContaminationError, DataError

__all__ = ["PUBLIC_TASK", "read_public_rows", "mix_public", "Decontaminator", "decontaminate"]

PUBLIC_TASK = "public"
_WORD = re.compile(r"[a-z0-9]+")
_BENCH_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _iter_file_records(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"`{path}` line {n} is not valid JSON ({e}).") from e
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"`{path}` is not valid JSON ({e}).") from e
        yield from (data if isinstance(data, list) else [data])
    elif suffix == ".parquet":
        import polars as pl

        yield from pl.read_parquet(path).iter_rows(named=True)
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"`{path}`: unsupported file type; use {', '.join(_BENCH_SUFFIXES)}.")


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _row_text(row: Mapping[str, Any]) -> str:
    parts = [str(m.get("content", "")) for m in row.get("messages") or []]
    parts.append(str(row.get("target") or ""))
    return "\n".join(parts)


@dataclass
class Decontaminator:
    """An index of benchmark n-grams; ``match(text)`` returns the (file, n-gram) a text shares, or None."""

    files: Sequence[str | Path]
    n: int = 8
    min_words: int = 6
    index: dict[tuple[str, ...], str] = field(default_factory=dict, repr=False)
    file_records: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n < 3:
            raise ConfigError(f"`decontam_ngram` must be >= 3 (shorter n-grams match ordinary prose); got {self.n}.")
        paths: list[Path] = []
        for f in self.files:
            p = Path(f)
            if p.is_dir():
                found = sorted(q for q in p.rglob("*") if q.suffix.lower() in _BENCH_SUFFIXES)
                if not found:
                    raise ConfigError(f"`decontaminate` directory `{p}` has no {'/'.join(_BENCH_SUFFIXES)} file.")
                paths.extend(found)
            elif p.is_file():
                paths.append(p)
            else:
                raise ConfigError(f"`decontaminate` entry `{p}` does not exist.")
        for p in paths:
            count = 0
            for rec in _iter_file_records(p):
                count += 1
                for s in _strings(rec):
                    w = _words(s)
                    if len(w) >= self.n:
                        for i in range(len(w) - self.n + 1):
                            self.index.setdefault(tuple(w[i:i + self.n]), str(p))
                    elif len(w) >= self.min_words:
                        self.index.setdefault(tuple(w), str(p))
            self.file_records[str(p)] = count

    def match(self, text: str) -> tuple[str, str] | None:
        w = _words(text)
        sizes = {self.n} | ({k for k in range(self.min_words, self.n)} if self.min_words < self.n else set())
        for k in sorted(sizes, reverse=True):
            for i in range(len(w) - k + 1):
                hit = self.index.get(tuple(w[i:i + k]))
                if hit is not None:
                    return hit, " ".join(w[i:i + k])
        return None


def decontaminate(
    rows: Sequence[Mapping[str, Any]], decontaminator: Decontaminator, *, on_contamination: str = "error"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(clean rows, refused rows with ``file`` and ``ngram``); raises on any overlap when ``"error"``."""
    if on_contamination not in ("error", "drop"):
        raise ConfigError(f"`on_contamination` must be 'error' or 'drop'; got {on_contamination!r}.")
    clean: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for row in rows:
        hit = decontaminator.match(_row_text(row))
        if hit is None:
            clean.append(dict(row))
        else:
            refused.append({"id": row.get("id"), "task": row.get("task"), "file": hit[0], "ngram": hit[1]})
    if refused and on_contamination == "error":
        shown = "; ".join(f"row {r['id']!r} shares '{r['ngram']}' with `{r['file']}`" for r in refused[:5])
        more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
        raise ContaminationError(f"{len(refused)} training row(s) overlap benchmark files: {shown}{more}. "
                                 "Remove them, or set `on_contamination = \"drop\"` to drop and report them.")
    return clean, refused


def read_public_rows(path: str | Path) -> list[dict[str, Any]]:
    """Public chat data as training rows (task ``public``): ``messages`` ending with an assistant turn, or
    ``prompt``/``response`` (plus optional ``system``) columns. Rows without an ``id`` get ``public-<n>``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"`public_data` file `{p}` does not exist.")
    out: list[dict[str, Any]] = []
    for n, rec in enumerate(_iter_file_records(p)):
        if not isinstance(rec, Mapping):
            raise DataError(f"`{p}` record {n} is not an object.")
        rid = str(rec.get("id") or f"public-{n}")
        if rec.get("messages"):
            msgs = [dict(m) for m in rec["messages"]]
            if msgs[-1].get("role") != "assistant" or len(msgs) < 2:
                raise DataError(f"`{p}` record {n} (id {rid!r}): `messages` must end with an assistant turn.")
            prompt, target = msgs[:-1], str(msgs[-1].get("content", ""))
        elif rec.get("prompt") is not None and rec.get("response") is not None:
            prompt = ([{"role": "system", "content": str(rec["system"])}] if rec.get("system") else [])
            prompt.append({"role": "user", "content": str(rec["prompt"])})
            target = str(rec["response"])
        else:
            raise DataError(f"`{p}` record {n} (id {rid!r}) needs `messages` or `prompt`+`response`.")
        if not target.strip():
            raise DataError(f"`{p}` record {n} (id {rid!r}) has an empty assistant response.")
        out.append({"id": f"public:{rid}", "task": PUBLIC_TASK, "mode": "public", "messages": prompt,
                    "target": target})
    if not out:
        raise DataError(f"`public_data` file `{p}` has no records.")
    return out


def mix_public(
    ads_rows: Sequence[Mapping[str, Any]], public_rows: Sequence[Mapping[str, Any]], *, ratio: float, seed: int
) -> list[dict[str, Any]]:
    """Ads rows plus ``round(ratio/(1−ratio)·len(ads))`` public rows drawn without replacement (seeded)."""
    import random

    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"`public_ratio` must be in [0, 1); got {ratio}.")
    n = round(ratio / (1.0 - ratio) * len(ads_rows)) if ratio > 0 else 0
    if n > len(public_rows):
        raise ConfigError(f"`public_ratio` = {ratio} needs {n} public rows for {len(ads_rows)} ads rows; the "
                          f"public file has {len(public_rows)}. Lower the ratio or supply more data.")
    picked = random.Random(seed).sample(list(public_rows), n) if n else []
    return [dict(r) for r in ads_rows] + [dict(r) for r in picked]

