"""Test helpers: a policy that writes queries, and the sample world's prompts for the retrieval reward.

adnanny-sft's shared fixture (`adnanny_sft.testing.fine_tuned_fixture()`) is trained on `query_ad`; the retrieval
reward needs a policy that answers `keyword_query` prompts with ``<Query>…</Query>``. `query_writer_fixture`
gives one honestly: when the shared fixture already has the task (its export carries `tasks/keyword_query.toml`)
it is returned as is; otherwise a short SFT warm start of it on the sample world's own keyword -> query pairs —
the same corpus the fixture was trained from, through adnanny-sft's public `SFTConfig`/`train` — is built once
and cached by content (the base fixture's own content key, the recipe below and this file's source), under a
lock and published with one atomic rename, like the shared fixture.

`retrieval_prompt_files` writes the prompts of the retrieval learning test from the world's ad catalog: one row
per ad (keyword = the ad's product) whose ad has clicked queries in the held-out sessions (an ad without any
has a gain of exactly 0 whatever the policy writes), split by a hash of the ad id into train and eval ads that
never overlap; ads the warm start was trained on are kept out of the eval file. `label_prompt_files` writes the
label learning test's prompts: labeled rows the fixture never trained on, and the corpus's eval split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["QUERY_WRITER_RECIPE", "label_prompt_files", "query_writer_fixture", "retrieval_prompt_files",
           "world_of_fixture"]

#: The warm start: the sample world's own keyword -> query pairs (`keyword_query.parquet`, the rule teacher's
#: compliant queries, ~1k rows) turned into a label-only corpus with adnanny-cook's teacherless `corpus` path, minus
#: the retrieval test's eval ads; SFT from the shared fixture's weights. What helps retrieval (the ad's own
#: product and brand words, no filler that dilutes BM25's length normalisation) is left for GRPO to find.
QUERY_WRITER_RECIPE: dict[str, Any] = {
    "tasks": ["keyword_query"], "target_forms": ["label"], "batch_size": 16, "max_steps": 1200, "lr": 3e-3,
    "warmup_steps": 10, "lr_schedule": "cosine", "min_lr_ratio": 0.2, "task_weighting": False,
    "instance_weighting": False, "evaluate": False, "class_balance": "none", "seed": 0,
}
#: share of the catalog's ads (by a hash of the ad id) held out for evaluation
EVAL_SHARE = 0.25


def _is_eval_ad(ad_id: str, share: float = EVAL_SHARE) -> bool:
    return int(hashlib.sha256(ad_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def world_of_fixture(model_dir: str | os.PathLike[str]) -> Path:
    """The sample world a fixture model was trained on (`<key>/sample`, next to `<key>/model`)."""
    d = Path(model_dir).resolve().parent / "sample"
    if not (d / "catalog" / "ads.parquet").is_file():
        from adnanny_rl.errors import RLConfigError

        raise RLConfigError(f"`{model_dir}`: no sample world at `{d}` (not a fixture model directory)")
    return d


def _key(base: Path, recipe: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(str(base.resolve()).encode())             # the base fixture's folder name is its content key
    h.update(json.dumps(recipe, sort_keys=True).encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:24]


def query_writer_fixture(base: str | os.PathLike[str] | None = None, *, threads: int = 0) -> Path:
    """A model dir that writes `keyword_query` queries, next to the sample world it was trained on (see module).

    The returned folder's parent holds `sample/` (a link to the base fixture's world), so `world_of_fixture`
    works on it as on the shared fixture."""
    import fcntl

    from adnanny_sft.fixture import fixture_root

    if base is None:
        from adnanny_sft.testing import fine_tuned_fixture

        base = fine_tuned_fixture(threads=threads)
    base = Path(base)
    if (base / "tasks" / "keyword_query.toml").is_file():
        return base
    root = fixture_root()
    final = root / f"rl-querywriter-{_key(base, QUERY_WRITER_RECIPE)}"
    if (final / "done.json").is_file():
        return final / "model"
    root.mkdir(parents=True, exist_ok=True)
    # a blocking flock: a second process waits for the first one's build instead of building it again
    with open(root / f"{final.name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        if (final / "done.json").is_file():
            return final / "model"
        work = root / f".build-{final.name}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            from adnanny_sft.config import SFTConfig
            from adnanny_sft.train import train

            world = world_of_fixture(base)
            corpus = _query_corpus(world, work / "corpus")
            cfg = SFTConfig(corpus=str(corpus), model=str(base), output_dir=str(work / "run"),
                            progress=False, tensorboard=False, save_every=10**9, keep_checkpoints=1,
                            threads=threads, **QUERY_WRITER_RECIPE)
            result = train(cfg)
            if result.model_dir is None:
                raise RuntimeError(f"the warm start in `{work / 'run'}` exported no model")
            shutil.move(str(result.model_dir), str(work / "model"))
            (work / "sample").symlink_to(world, target_is_directory=True)
            shutil.rmtree(work / "run", ignore_errors=True)
            shutil.rmtree(work / "corpus", ignore_errors=True)
            (work / "done.json").write_text(json.dumps({"base": str(base), "recipe": QUERY_WRITER_RECIPE,
                                                        "steps": result.steps}, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final / "model"


def _query_corpus(world: Path, out: Path) -> Path:
    """The world's keyword -> query pairs of non-eval ads as a label-only `keyword_query` corpus."""
    import polars as pl

    from adnanny_cook.config import CorpusConfig
    from adnanny_cook.label_corpus import run_corpus

    ads = pl.read_parquet(world / "catalog" / "ads.parquet")
    eval_titles = {t for a, t in zip(ads["id"], ads["title"], strict=True) if _is_eval_ad(a)}
    pairs = pl.read_parquet(world / "keyword_query.parquet").filter(~pl.col("ad_title").is_in(list(eval_titles)))
    src = out.parent / "keyword_query_pairs.jsonl"
    src.write_text("\n".join(json.dumps({k: r[k] for k in ("id", "keyword", "ad_title", "ad_description",
                                                             "landing_page", "query")})
                              for r in pairs.iter_rows(named=True)) + "\n")
    run_corpus(CorpusConfig(task="keyword_query", input=str(src), out=str(out), labels=["query"],
                            eval_fraction=0.05, seed=0))
    return out


def retrieval_prompt_files(world_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                           eval_share: float = EVAL_SHARE) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) `keyword_query` prompts over the world's ads with held-out clicked queries."""
    import polars as pl

    from adnanny_rl.data import clicked_queries, load_world, split_world

    world = Path(world_dir)
    _, held_logs = split_world(world, load_world(world))
    with_clicks = {a for ads in clicked_queries(held_logs).values() for a in ads}
    seen_titles: set[str] = set()
    corpus = world / "corpus" / "corpus.parquet"
    if corpus.is_file():
        kq = pl.read_parquet(corpus).filter(pl.col("task") == "keyword_query")
        seen_titles = {json.loads(s).get("ad_title", "") for s in kq["input"]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[str]] = {"train": [], "eval": []}
    ads = pl.read_parquet(world / "catalog" / "ads.parquet").sort("id")
    for r in ads.iter_rows(named=True):
        if r["id"] not in with_clicks:
            continue
        part = "eval" if _is_eval_ad(r["id"], eval_share) else "train"
        if part == "eval" and r["title"] in seen_titles:
            continue
        rows[part].append(json.dumps({"id": r["id"], "ad_id": r["id"], "keyword": r["product"],
                                      "ad_title": r["title"], "ad_description": r["description"],
                                      "landing_page": r["landing_page"]}))
    paths = (out / "train.jsonl", out / "eval.jsonl")
    for p, part in zip(paths, ("train", "eval"), strict=True):
        p.write_text("\n".join(rows[part]) + "\n")
    return paths


def label_prompt_files(world_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], task: str = "query_ad"
                       ) -> tuple[Path, Path]:
    """(train.jsonl, eval.jsonl) labeled prompts of `task` for the label learning test.

    train: the world's noise-free labeled rows that are in neither its corpus nor its golden set — inputs the SFT
    fixture never trained on (GRPO on the rows SFT memorised has nothing to find on them, and what it fits there
    is not what the held-out rows miss). eval: the corpus's eval split (label mode), the rows sft calibrated its
    threshold on and never trained on. Both as flat JSONL (`id`, the task's inputs, its label fields)."""
    import polars as pl

    from adnanny_cook.tasks import get_task

    spec = get_task(task)
    world = Path(world_dir)
    corpus = pl.read_parquet(world / "corpus" / "corpus.parquet").filter(pl.col("task") == task)
    prefix = f"{task}-"
    used = {i.removeprefix(prefix).removesuffix("-r").removesuffix("-l") for i in corpus["id"].to_list()}
    golden = world / "golden" / f"{task}.jsonl"
    if golden.is_file():
        used |= {json.loads(line)["id"] for line in golden.read_text().splitlines() if line.strip()}
    cols = ["id", *spec.input_fields, *spec.field_order]
    fresh = (pl.read_parquet(world / f"{task}.parquet")
             .filter(~pl.col("id").is_in(sorted(used)) & ~pl.col("noisy")).select(cols))
    held = [{"id": r["id"].removesuffix("-l"), **json.loads(r["input"]), **json.loads(r["labels"])}
            for r in corpus.filter((pl.col("split") == "eval") & (pl.col("mode") == "label")).iter_rows(named=True)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "train.jsonl", out / "eval.jsonl")
    paths[0].write_text("".join(json.dumps(r) + "\n" for r in fresh.to_dicts()))
    paths[1].write_text("".join(json.dumps(r) + "\n" for r in held))
    return paths
