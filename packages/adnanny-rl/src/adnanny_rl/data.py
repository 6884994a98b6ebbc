"""Prompt rows for RL and the downstream worlds the batch rewards consume.

A task's prompts come from a corpus (adnanny-cook's schema: `task`, `input`, `labels`, `split`) or from a
CSV/JSONL/Parquet of inputs (+ gold labels) read with adnanny-cook's reader. Corpus rows appear once per target
form (label and reasoning); a prompt is one *input*, so rows are de-duplicated by input. The corpus `eval`
split gives the held-out prompts the learning test scores; a plain file is split 90/10 by a hash of the row id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_rl.errors import RLConfigError

__all__ = ["PromptRow", "World", "attach_ad_ids", "clicked_queries", "load_prompt_rows", "load_world", "split_world"]


@dataclass(frozen=True)
class PromptRow:
    id: str
    input: dict[str, Any]
    labels: dict[str, Any]
    extra: dict[str, Any]

    def as_reward_row(self) -> dict[str, Any]:
        return {**self.input, **self.extra, "id": self.id, "labels": self.labels}


def _corpus_file(path: Path) -> Path | None:
    if path.is_dir() and (path / "corpus.parquet").is_file():
        return path / "corpus.parquet"
    if path.suffix == ".parquet" and path.is_file():
        import polars as pl

        if {"task", "input", "labels", "split"} <= set(pl.read_parquet_schema(path)):
            return path
    return None


def load_prompt_rows(data: str | Path, spec: Any, *, allow_no_train: bool = False
                     ) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, held-out) prompt rows of task `spec` from `data` (see the module docstring); `allow_no_train`
    accepts a file with held-out rows only (a task's `eval_data`)."""
    p = Path(data)
    if not p.exists():
        raise RLConfigError(f"task `{spec.name}`: `data` `{p}` does not exist")
    corpus = _corpus_file(p)
    train: list[PromptRow] = []
    held: list[PromptRow] = []
    seen: set[str] = set()
    if corpus is not None:
        import polars as pl

        df = pl.read_parquet(corpus).filter(pl.col("task") == spec.name)
        for r in df.iter_rows(named=True):
            key = r["input"]
            if key in seen:
                continue
            seen.add(key)
            row = PromptRow(id=str(r["id"]).removesuffix("-r").removesuffix("-l"), input=json.loads(r["input"]),
                            labels=json.loads(r["labels"]), extra={})
            (held if r["split"] == "eval" else train).append(row)
    else:
        from adnanny_cook.inputs import iter_rows

        label_fields = set(spec.field_order)
        for chunk in iter_rows(p):
            for i, r in enumerate(chunk):
                rid = str(r.get("id", len(seen) + i))
                inp = {f: r.get(f) for f in spec.input_fields}
                labels = {f: r[f] for f in label_fields if r.get(f) not in (None, "")}
                extra = {k: v for k, v in r.items() if k not in inp and k not in label_fields}
                row = PromptRow(id=rid, input=inp, labels=labels, extra=extra)
                bucket = int(hashlib.sha256(rid.encode()).hexdigest()[:8], 16) % 10
                (held if bucket == 0 else train).append(row)
            seen.update(str(r.get("id", "")) for r in chunk)
    if not train and not (allow_no_train and held):
        raise RLConfigError(f"task `{spec.name}`: `{p}` holds no training prompts for this task")
    return train, held


@dataclass(frozen=True)
class World:
    """What the frozen downstream models see: the ad catalog and the click logs of a sample world."""

    ads: dict[str, str]                      # ad id -> title + description (the retriever's documents)
    title_to_ad: dict[str, str]              # ad title -> ad id (rows name ads by their title)
    impressions: list[dict[str, Any]]        # query, ad_id, position, clicked


def load_world(path: str | Path) -> World:
    """Read `catalog/ads.parquet` and `logs/impressions.parquet` of an adnanny-cook sample world."""
    import polars as pl

    root = Path(path)
    ads_f, imp_f = root / "catalog" / "ads.parquet", root / "logs" / "impressions.parquet"
    for f in (ads_f, imp_f):
        if not f.is_file():
            raise RLConfigError(f"`world` `{root}` lacks `{f.relative_to(root)}` (make one with "
                                f"`adnanny-cook sample`)")
    ads = pl.read_parquet(ads_f)
    docs = {r["id"]: f"{r['title']} {r['description']}" for r in ads.iter_rows(named=True)}
    titles: dict[str, str] = {}
    for r in ads.iter_rows(named=True):
        titles.setdefault(r["title"], r["id"])
    imps = pl.read_parquet(imp_f).select("query", "ad_id", "position", "clicked").to_dicts()
    return World(ads=docs, title_to_ad=titles, impressions=imps)


def clicked_queries(world: World, ad_ids: set[str] | None = None) -> dict[str, list[str]]:
    """Clicked query -> the ads it was clicked on, from the impressions given (restricted to `ad_ids`)."""
    out: dict[str, set[str]] = {}
    for r in world.impressions:
        if r["clicked"] and (ad_ids is None or r["ad_id"] in ad_ids):
            out.setdefault(r["query"], set()).add(r["ad_id"])
    return {q: sorted(a) for q, a in sorted(out.items())}


def split_world(root: str | Path, world: World) -> tuple[World, World]:
    """(train, held-out) views of the world's click logs by time (adnanny-cook's `click_split`): the CTR model is
    fitted on the earlier sessions and the retrieval reward scores the later sessions' clicked queries, so no
    downstream metric is computed on the logs its model saw."""
    from adnanny_cook.sample import click_split

    sp = click_split(Path(root), by="time")
    cols = ["query", "ad_id", "position", "clicked"]
    return (World(ads=world.ads, title_to_ad=world.title_to_ad, impressions=sp.train.select(cols).to_dicts()),
            World(ads=world.ads, title_to_ad=world.title_to_ad, impressions=sp.held_out.select(cols).to_dicts()))


def attach_ad_ids(rows: list[PromptRow], world: World) -> list[PromptRow]:
    """Rows that name an ad by its title get its catalog id (`ad_id`); rows whose ad is unknown are refused."""
    out = []
    for r in rows:
        if "ad_id" in r.extra:
            out.append(r)
            continue
        ad = world.title_to_ad.get(str(r.input.get("ad_title")))
        if ad is None:
            raise RLConfigError(f"row `{r.id}`: ad title {r.input.get('ad_title')!r} is not in the world's catalog")
        out.append(PromptRow(id=r.id, input=r.input, labels=r.labels, extra={**r.extra, "ad_id": ad}))
    return out

