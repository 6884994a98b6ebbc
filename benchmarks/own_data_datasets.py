"""The labeled files of `benchmarks/own_data.py`: what a user brings, written the way a user would have them.

Each builder writes, under a work folder (never into the repository):

* ``dev.csv``  — the user's labeled rows that go into the corpus (cook splits them into train / eval; sft
  trains on train and calibrates its threshold on eval, i.e. a validation split);
* ``test.csv`` — held-out rows, in the same format, labeled by every model;
* ``gold.csv`` — ``id``, ``label``: the test labels mapped to the task's canonical values (by cook's
  ``spec.map_label``, the one definition of the mapping), which adnanny-eval reads;

and returns a `Dataset` that names the task, the file-column mapping (``--columns``), the caps and the
structured rows the baselines need.

(a) `sample_world_dataset`: adnanny-cook's sample world's query–ad judgments exported as a CSV with a
    relevance label only, *empty* product descriptions, no URL column and a user's own column names
    (``search_term``, ``product_title``, ``product_description``, ``relevance``). The held-out queries are
    chosen with cook's own near-duplicate-aware split (`adnanny_cook.split.split_rows`), so no test query is
    a reordering of a training query.

(b) `movielens_dataset`: ``../shared/data/movielens_small`` (read in place) as an ad–user relevance task
    (`own_data_movielens.toml`). Split by user, then by time within each user:

    * users are shuffled (seeded); `eval_user_fraction` of them are test users, the rest dev users (cook's
      split of dev rows then groups by ``user_history``, which is fixed per user, so its train and eval
      users are disjoint too);
    * each user's ratings in time order are cut at ``n − round(target_fraction · n)``: the ratings before
      the cut are the user's past, those after it the candidate items;
    * the user history is the last `history_len` ratings before the cut, oldest first, as
      ``Title (Year) [Genre, Genre] 4.5/5``; items are drawn (seeded) from after the cut, at most
      `items_per_user` per user;
    * the label is the item's rating mapped by the task file's ``label_map`` (bad ≤ 2.5 < fair ≤ 3.5 < good);
    * the popularity "training period" is every dev user's ratings before that user's cut: no rating of any
      candidate item (a label) and nothing of a test user feeds the baseline's popularity features.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MOVIELENS_TASK = HERE / "own_data_movielens.toml"
MOVIELENS_DIR = Path("/work/shared/data/movielens_small")

__all__ = ["MOVIELENS_DIR", "MOVIELENS_TASK", "Dataset", "movielens_dataset", "sample_world_dataset"]


@dataclass
class Dataset:
    """One labeled dataset as files + what the walk needs to run the CLIs and the baselines on it.

    `columns` maps task fields to file columns (the ``--columns`` value); `records` holds, per row id of
    dev and test, the structured fields a baseline reads (texts for the lexical one; item, genres, history
    genres and ratings for the popularity one); `popularity` is (item ids, ratings) of the training period.
    """

    name: str
    task: str
    dev_csv: Path
    test_csv: Path
    gold_csv: Path
    columns: dict[str, str]
    label_column: str
    defect: tuple[str, ...]
    non_defect_label: str
    lexical_fields: tuple[tuple[str, ...], tuple[str, ...]]
    records: dict[str, dict[str, Any]]
    caps: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    popularity: tuple[list[str], list[float]] | None = None
    rate_name: str = "DR"

    @property
    def columns_arg(self) -> str:
        """``field=column,...`` for ``--columns``."""
        return ",".join(f"{k}={v}" for k, v in self.columns.items())


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r[c] for c in columns})
    tmp.replace(path)


def _class_counts(labels: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in labels:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------- (a)
def sample_world_dataset(work: Path, *, seed: int = 0, n_test: int = 400, max_dev: int = 1600,
                         sizes: dict[str, int] | None = None) -> Dataset:
    """(a) The sample world's query–ad judgments as a relevance-only CSV with empty descriptions.

    ``sizes``: `make_sample` sizes (e.g. ``{"queries": 12000}`` for ~12k judgments instead of ~2.6k)."""
    import polars as pl

    from adnanny_cook import make_sample
    from adnanny_cook.split import split_rows

    work = Path(work)
    sample = work / "sample"
    if not (sample / "query_ad.parquet").exists():
        make_sample(sample, seed, tokenizer=False, sizes=sizes)
    qa = pl.read_parquet(sample / "query_ad.parquet").sort("id").to_dicts()
    sides = split_rows(["query_ad"] * len(qa), [{"query": r["query"]} for r in qa],
                       eval_fraction=n_test / len(qa), seed=seed + 100)
    rng = random.Random(seed)
    test = [r for r, s in zip(qa, sides, strict=True) if s == "eval"]
    dev = [r for r, s in zip(qa, sides, strict=True) if s == "train"]
    rng.shuffle(test)
    rng.shuffle(dev)
    test, dev_all = test[:n_test], len(dev)
    dev = dev[:max_dev]

    def user_row(r: dict[str, Any]) -> dict[str, Any]:
        return {"id": r["id"], "search_term": r["query"], "product_title": r["ad_title"],
                "product_description": "", "relevance": r["label"]}

    cols = ["id", "search_term", "product_title", "product_description", "relevance"]
    dev_rows = sorted((user_row(r) for r in dev), key=lambda r: r["id"])
    test_rows = sorted((user_row(r) for r in test), key=lambda r: r["id"])
    out = work / "sample_world"
    _write_csv(out / "dev.csv", dev_rows, cols)
    _write_csv(out / "test.csv", test_rows, cols)
    _write_csv(out / "gold.csv", [{"id": r["id"], "label": r["relevance"]} for r in test_rows], ["id", "label"])
    records = {r["id"]: {"query": r["search_term"], "ad_title": r["product_title"],
                         "ad_description": r["product_description"], "label": r["relevance"]}
               for r in dev_rows + test_rows}
    return Dataset(
        name="sample_world",
        task="query_ad",
        dev_csv=out / "dev.csv",
        test_csv=out / "test.csv",
        gold_csv=out / "gold.csv",
        columns={"query": "search_term", "ad_title": "product_title", "ad_description": "product_description",
                 "label": "relevance"},
        label_column="relevance",
        defect=("bad",),
        non_defect_label="good",
        lexical_fields=(("query",), ("ad_title", "ad_description")),
        records=records,
        caps={"n_test": len(test_rows), "n_dev": len(dev_rows), "n_dev_available": dev_all,
              "rows_in_sample_world": len(qa), "sample_sizes": sizes or {}, "descriptions": "empty",
              "url_column": "absent"},
        stats={"dev_classes": _class_counts([r["relevance"] for r in dev_rows]),
               "test_classes": _class_counts([r["relevance"] for r in test_rows])},
    )


# ----------------------------------------------------------------------------------------------- (b)
def _genres(raw: str) -> list[str]:
    return [] if raw.strip() in ("", "(no genres listed)") else raw.split("|")


def _stars(rating: float) -> str:
    return f"{rating:g}/5"


def movielens_dataset(
    work: Path,
    *,
    data_dir: Path = MOVIELENS_DIR,
    seed: int = 0,
    history_len: int = 8,
    target_fraction: float = 0.3,
    eval_user_fraction: float = 0.2,
    items_per_user: int = 4,
    max_dev: int = 1600,
    max_test: int = 400,
) -> Dataset:
    """(b) MovieLens as an ad–user relevance task: history = earlier rated titles, item = a later movie."""
    from adnanny_cook.tasks import load_task

    spec = load_task(str(MOVIELENS_TASK))
    data_dir = Path(data_dir)
    movies: dict[str, tuple[str, list[str]]] = {}
    with (data_dir / "movies.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            movies[r["movieId"]] = (r["title"], _genres(r["genres"]))
    by_user: dict[str, list[tuple[int, str, float]]] = {}
    with (data_dir / "ratings.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            by_user.setdefault(r["userId"], []).append((int(r["timestamp"]), r["movieId"], float(r["rating"])))
    users = sorted(by_user, key=int)
    rng = random.Random(seed)
    rng.shuffle(users)
    n_test_users = round(eval_user_fraction * len(users))
    test_users = set(users[:n_test_users])

    pop_items: list[str] = []
    pop_ratings: list[float] = []
    dev_rows: list[dict[str, Any]] = []
    test_rows: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    for user in users:
        events = sorted(by_user[user], key=lambda e: (e[0], int(e[1])))  # time order, ties by movie id
        n = len(events)
        cut = n - max(1, round(target_fraction * n))
        past, future = events[:cut], events[cut:]
        if user not in test_users:
            pop_items.extend(m for _, m, _ in past)
            pop_ratings.extend(v for _, _, v in past)
        hist = past[-history_len:]
        history = "; ".join(f"{movies[m][0]} [{', '.join(movies[m][1]) or 'no genres'}] {_stars(v)}"
                            for _, m, v in hist)
        picked = rng.sample(future, min(items_per_user, len(future)))
        for ts, m, v in sorted(picked):
            title, genres = movies[m]
            row = {"id": f"u{user}-m{m}", "history": history, "title": title, "genres": ", ".join(genres),
                   "rating": f"{v:.1f}", "user_id": user, "movie_id": m, "timestamp": ts}
            (test_rows if user in test_users else dev_rows).append(row)
            records[row["id"]] = {
                "item": m, "item_genres": genres, "history_items": [h[1] for h in hist],
                "history_genres": [movies[h[1]][1] for h in hist], "history_ratings": [h[2] for h in hist],
                "user_history": history, "movie": title, "genres": row["genres"],
                "label": spec.map_label("label", row["rating"]),
            }
    n_dev_all, n_test_all = len(dev_rows), len(test_rows)
    rng.shuffle(dev_rows)
    rng.shuffle(test_rows)
    dev_rows = sorted(dev_rows[:max_dev], key=lambda r: r["id"])
    test_rows = sorted(test_rows[:max_test], key=lambda r: r["id"])
    keep = {r["id"] for r in dev_rows + test_rows}
    records = {k: v for k, v in records.items() if k in keep}

    cols = ["id", "history", "title", "genres", "rating", "user_id", "movie_id", "timestamp"]
    out = Path(work) / "movielens"
    _write_csv(out / "dev.csv", dev_rows, cols)
    _write_csv(out / "test.csv", test_rows, cols)
    gold = [{"id": r["id"], "label": records[r["id"]]["label"]} for r in test_rows]
    _write_csv(out / "gold.csv", gold, ["id", "label"])
    return Dataset(
        name="movielens",
        task=str(MOVIELENS_TASK),
        dev_csv=out / "dev.csv",
        test_csv=out / "test.csv",
        gold_csv=out / "gold.csv",
        columns={"user_history": "history", "movie": "title", "genres": "genres", "label": "rating"},
        label_column="rating",
        defect=("bad",),
        non_defect_label="good",
        lexical_fields=(("user_history",), ("movie", "genres")),
        records=records,
        caps={"history_len": history_len, "target_fraction": target_fraction,
              "eval_user_fraction": eval_user_fraction, "items_per_user": items_per_user,
              "n_dev": len(dev_rows), "n_dev_available": n_dev_all, "n_test": len(test_rows),
              "n_test_available": n_test_all, "users": len(users), "test_users": n_test_users,
              "popularity_period_ratings": len(pop_items)},
        stats={"dev_classes": _class_counts([records[r["id"]]["label"] for r in dev_rows]),
               "test_classes": _class_counts([g["label"] for g in gold]),
               "test_users_in_test_rows": len({r["user_id"] for r in test_rows})},
        popularity=(pop_items, pop_ratings),
        rate_name="RR",
    )
