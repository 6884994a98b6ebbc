"""Train / held-out splits of the sample world's click logs (`logs/impressions.parquet`).

Why: a retrieval reward scores the queries a policy writes for an ad against *clicked* queries; if those clicks
also trained anything the reward depends on (a CTR model, a retriever, the prompts), the reward measures recall
of seen data. `click_split` cuts the logs once, deterministically, so every consumer uses the same held-out set.
Impressions are split whole-session (a session's searches never straddle the cut), or whole-user / whole-query
for the stricter questions "does it generalise to new users?" and "to queries never seen in training?".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adnanny_cook.errors import ConfigError

if TYPE_CHECKING:  # polars loads inside the functions: `import adnanny_cook` stays light
    import polars as pl

__all__ = ["SPLIT_BY", "ClickSplit", "click_split", "queries_by_ad"]

#: The ways to cut the logs; the column each groups by (time: whole sessions, ordered by their first search).
SPLIT_BY: dict[str, str] = {"time": "session_id", "session": "session_id", "user": "user_id", "query": "query"}


@dataclass(frozen=True)
class ClickSplit:
    """Impressions (clicked or not) on each side of the cut; filter `clicked` for the clicks.

    `cutoff` is the first held-out session's start for a time split (every train session starts before it), else
    None.
    """

    train: pl.DataFrame
    held_out: pl.DataFrame
    by: str
    cutoff: datetime | None = None

    def held_out_queries(self) -> dict[str, list[str]]:
        """Ad id -> the distinct queries it was clicked for in the held-out part."""
        return queries_by_ad(self.held_out)


def _unit(seed: int, value: str) -> float:
    """A stable number in [0, 1) per (seed, value): the same on every machine and Python (no `hash()`)."""
    h = hashlib.blake2b(f"{seed}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2 ** 64


def click_split(world: str | Path | pl.DataFrame, *, by: Literal["time", "session", "user", "query"] = "time",
                held_out: float = 0.2, seed: int = 0) -> ClickSplit:
    """Split a sample world's impressions into train and held-out.

    `world`: the sample world's folder (reads `logs/impressions.parquet`) or the impressions frame itself.
    `by="time"` (default) holds out the last `held_out` share of sessions by start time, the way a model is
    validated on the days after its training logs; `"session"`, `"user"` and `"query"` hold out a seeded random
    `held_out` share of sessions, users or query texts (with `"query"`, no held-out query occurs in train).
    Deterministic for a given world, `by`, `held_out` and `seed` (`seed` is unused by the time split).
    """
    import polars as pl

    if by not in SPLIT_BY:
        raise ConfigError(f"`by` must be one of {sorted(SPLIT_BY)}; got {by!r}")
    if not 0.0 < float(held_out) < 1.0:
        raise ConfigError(f"`held_out` must be a share strictly between 0 and 1; got {held_out!r}")
    if isinstance(world, pl.DataFrame):
        df, where = world, "the impressions frame"
    else:
        f = Path(world) / "logs" / "impressions.parquet"
        if not f.is_file():
            raise ConfigError(f"`{world}` has no `logs/impressions.parquet` (write a world with "
                              f"`adnanny-cook sample --out DIR`)")
        df, where = pl.read_parquet(f), f"`{f}`"
    key = SPLIT_BY[by]
    need = {key, "clicked"} | ({"timestamp"} if by == "time" else set())
    missing = sorted(need - set(df.columns))
    if missing:
        raise ConfigError(f"{where} lacks column(s) {missing} needed for a `{by}` split (an older sample world? "
                          f"rewrite it with `adnanny-cook sample`)")
    cutoff = None
    if by == "time":
        starts = (df.group_by("session_id").agg(pl.col("timestamp").min().alias("start"))
                  .sort("start", "session_id"))
        n_held = max(1, min(starts.height - 1, round(float(held_out) * starts.height)))
        held_keys = starts.tail(n_held)
        cutoff = held_keys["start"][0]
        keys = held_keys["session_id"]
    else:
        values = df[key].unique().sort()
        keys = pl.Series([v for v in values.to_list() if _unit(seed, str(v)) < float(held_out)], dtype=values.dtype)
    mask = pl.col(key).is_in(keys.implode())
    return ClickSplit(train=df.filter(~mask), held_out=df.filter(mask), by=by, cutoff=cutoff)


def queries_by_ad(impressions: pl.DataFrame) -> dict[str, list[str]]:
    """Ad id -> its distinct clicked queries (sorted), for the clicked rows of `impressions`."""
    import polars as pl

    g = (impressions.filter(pl.col("clicked")).group_by("ad_id")
         .agg(pl.col("query").unique().sort().alias("queries")).sort("ad_id"))
    return dict(zip(g["ad_id"].to_list(), g["queries"].to_list(), strict=True))
