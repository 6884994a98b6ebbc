"""The sample world's click logs: sessions of the world's users over time, and a held-out click set that has
several distinct clicked queries per ad (what adnanny-rl's retrieval reward scores against)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import polars as pl
import pytest

from adnanny_cook.errors import ConfigError
from adnanny_cook.sample import click_split, queries_by_ad
from adnanny_cook.sample.world import IMPRESSION_COLUMNS, LOG_DAYS, LOG_START


@pytest.fixture(scope="module")
def logs(sample_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(sample_dir / "logs/impressions.parquet")


def test_impressions_belong_to_users_sessions_and_time(sample_dir: Path, logs: pl.DataFrame) -> None:
    assert tuple(logs.columns) == IMPRESSION_COLUMNS
    assert {"query", "ad_id", "position", "clicked"} <= set(logs.columns)     # what adnanny-rl reads
    users = set(pl.read_parquet(sample_dir / "users.parquet")["id"])
    assert set(logs["user_id"]) <= users and logs["user_id"].n_unique() > 0.9 * len(users)
    per_session = logs.group_by("session_id").agg(pl.col("user_id").n_unique().alias("u"), pl.len().alias("n"))
    assert per_session["u"].max() == 1                                          # a session is one user's
    assert per_session["n"].max() > 3                                           # some sessions hold several searches
    assert logs["timestamp"].min() >= LOG_START
    assert (logs["timestamp"].max() - LOG_START).days < LOG_DAYS
    m = json.loads((sample_dir / "manifest.json").read_text())["counts"]
    assert m["sessions"] == per_session.height == 6000 and m["impressions"] == logs.height
    assert m["clicks"] == logs["clicked"].sum() > 4000
    assert logs["ad_id"].n_unique() > 900 and set(logs["position"].unique()) == {1, 2, 3}
    ctr = dict(logs.group_by("position").agg(pl.col("clicked").mean()).iter_rows())
    assert ctr[1] > ctr[2] > ctr[3]                                             # position bias
    by_ad = queries_by_ad(logs)
    assert statistics.median(len(q) for q in by_ad.values()) >= 3              # was 1 before issue 12


def test_time_split_holds_out_the_latest_sessions_whole(sample_dir: Path, logs: pl.DataFrame) -> None:
    s = click_split(sample_dir)
    assert s.by == "time" and s.train.height + s.held_out.height == logs.height
    tr, ho = set(s.train["session_id"]), set(s.held_out["session_id"])
    assert not tr & ho and abs(len(ho) / (len(tr) + len(ho)) - 0.2) < 0.01
    starts = logs.group_by("session_id").agg(pl.col("timestamp").min().alias("t"))
    start = dict(starts.iter_rows())
    assert max(start[x] for x in tr) <= s.cutoff <= min(start[x] for x in ho)
    again = click_split(logs)                                                   # a frame works like the folder
    assert again.held_out.equals(s.held_out) and again.train.equals(s.train)


def test_held_out_has_several_distinct_clicked_queries_for_many_ads(sample_dir: Path) -> None:
    held = click_split(sample_dir).held_out_queries()
    several = [ad for ad, qs in held.items() if len(qs) >= 3]
    assert len(held) > 400 and len(several) >= 100, (len(held), len(several))
    assert all(len(set(qs)) == len(qs) for qs in held.values())


@pytest.mark.parametrize(("by", "column"), [("session", "session_id"), ("user", "user_id"), ("query", "query")])
def test_grouped_splits_never_share_a_group(sample_dir: Path, by: str, column: str) -> None:
    s = click_split(sample_dir, by=by, held_out=0.25, seed=3)
    assert not set(s.train[column]) & set(s.held_out[column])
    n = s.train[column].n_unique() + s.held_out[column].n_unique()
    assert 0.18 < s.held_out[column].n_unique() / n < 0.32
    assert s.held_out.equals(click_split(sample_dir, by=by, held_out=0.25, seed=3).held_out)
    assert not s.held_out.equals(click_split(sample_dir, by=by, held_out=0.25, seed=4).held_out)
    assert len([a for a, q in s.held_out_queries().items() if len(q) >= 3]) >= 50


def test_click_split_refuses_bad_arguments_by_name(tmp_path: Path, logs: pl.DataFrame) -> None:
    with pytest.raises(ConfigError, match=r"`by` must be one of .*'query'.*got 'day'"):
        click_split(logs, by="day")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"`held_out` must be a share strictly between 0 and 1; got 1.5"):
        click_split(logs, held_out=1.5)
    with pytest.raises(ConfigError, match=r"has no `logs/impressions.parquet`"):
        click_split(tmp_path)
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['timestamp'\] needed for a `time` split"):
        click_split(logs.drop("timestamp"))
