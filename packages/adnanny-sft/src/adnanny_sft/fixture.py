"""A shared fine-tuned tiny model for tests: ``fine_tuned_fixture()`` -> an exported model directory.

Later stages (rl, the flow, the checkpoint round trip, serve) need a model that answers in the tag format and
has learned something, not a random init. This builds one from cook's sample world with the recipe
:data:`FIXTURE_RECIPE` — a tiny DeepSeek-V3 (design.md) trained on the sample corpus in both target forms (so
label-only and label+reasoning outputs parse), all three ``query_ad`` labels, an LM loss on the task input,
3-class balanced sampling — so it has learned relevance through the full built-in prompt — and exports it like ``adnanny-sft train`` does (HF dir + ``adnanny_model.json`` with a calibrated threshold +
``tasks/<name>.toml``).

It is built once and cached by content: the key hashes the recipe, the resolved SFTConfig values, the cook
sources that generate the sample corpus, its prompts and tokenizer, the adnanny-sft modules that build the model
(not its CLI, logger or test kit) and the torch/transformers versions; any such change builds a new one.
The cache is ``$ADNANNY_CACHE/fixtures/<key>`` (default ``~/.cache/adnanny/fixtures/<key>``). Two processes
asking at once (pytest-xdist, two suites) do not both build: an exclusive ``flock`` on ``<key>.lock``
serialises them, the build happens in a temporary sibling directory, and it is published with one atomic
``rename`` — a reader sees a complete directory or none.

Layout of ``<key>/``: ``model/`` (what this function returns), ``sample/`` (the sample world it was trained on:
corpus with its ``eval`` split, golden sets, tokenizer — the held-out rows tests evaluate on), ``fixture.json``
(recipe, key, build seconds, the training metrics and thresholds).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FIXTURE_RECIPE", "fine_tuned_fixture", "fixture_info", "fixture_key", "fixture_root"]

#: The recipe of the shared model: the sample world's size, how many reasoning rows to keep, and the SFTConfig
#: keys (see README, "The shared fine-tuned fixture" and the pilots). What later stages need is a model that
#: answers in the tag format in both modes AND has learned relevance through the full built-in prompt (what
#: `adnanny-sft train` and `adnanny-serve label` use). What makes a random-init tiny model learn it (pilots
#: L1-L4, A): the word-level sample tokenizer, an LM loss on the task input (`input_loss_weight` 0.3: predicting
#: the ad's words from the query's is what builds the matching), ~9k training inputs (a 12k-query world: on the
#: default 1.4k inputs it memorises), 3-class balanced draws, batch 32, lr 3e-3. Reasoning rows are kept for
#: 1,000 inputs only (they are 8x longer; a few thousand draws teach their format). All three labels are kept
#: (integration reads location/quality columns). The golden set is enlarged to 240 rows: clean held-out rows
#: that neither training nor threshold calibration (the corpus's eval split) ever sees. 1,600 steps, because the
#: matching is learned late and suddenly: on the flow's corpus the held-out AUC was 0.62 at step 600, 0.75 at
#: 800, 0.95 at 1,200 and 0.97 at 1,400 (session 5); at 800 steps a run either had crossed or had not.
FIXTURE_RECIPE: dict[str, Any] = {
    "sample": {"seed": 0, "sizes": {"queries": 12000, "corpus_query_ad": 10000, "golden_query_ad": 240}},
    "reasoning_inputs": {"query_ad": 1000},
    "sft": {
        "model": "tiny-deepseek-v3", "tiny_hidden_size": 64, "tiny_layers": 4,
        "tasks": ["query_ad"], "labels": [], "target_forms": ["reasoning", "label"],
        "class_balance": "sampling", "class_balance_by": "value", "input_loss_weight": 0.3,
        "batch_size": 32, "max_steps": 1600, "lr": 3e-3, "warmup_steps": 20, "lr_schedule": "cosine",
        "min_lr_ratio": 0.1, "task_weighting": False, "instance_weighting": False, "evaluate": False,
        "threshold_method": "max_bacc", "seed": 0,
    },
}


def fixture_root() -> Path:
    """``$ADNANNY_CACHE/fixtures`` or ``~/.cache/adnanny/fixtures``."""
    base = os.environ.get("ADNANNY_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "adnanny") / "fixtures"


#: adnanny-sft modules whose code decides the fixture's weights, threshold and export (data, formatting, model,
#: backend, sampler, objective, calibration, export). Not the CLI, the logger or the test kit: other helpers edit
#: those all session and they do not change what is built. SFTConfig's *values* are hashed instead of config.py.
_BUILD_MODULES = ("__about__", "backend", "calibration", "checkpoint", "data", "evaluation", "export", "formatting",
                  "hf_backend", "mixing", "models", "objective", "sampler", "scoring", "train", "weighting")

#: SFTConfig keys that do not reach the built model (paths of the build dir, logging, threads).
_NOT_BUILD_KEYS = ("corpus", "tokenizer", "output_dir", "resume", "progress", "tensorboard", "log_every",
                   "save_every", "keep_checkpoints", "export", "threads", "device", "timeout_minutes", "convert_dir")


def _sources_digest() -> str:
    """sha256 over the adnanny-sft sources that build the model (:data:`_BUILD_MODULES`) and the build code
    of this module (not its docstrings or the recipe constant, which is hashed as data)."""
    import inspect

    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent
    for name in _BUILD_MODULES:
        f = pkg / f"{name}.py"
        h.update(name.encode())
        h.update(f.read_bytes() if f.is_file() else b"absent")
    for fn in (_build, _config, _thin_reasoning, fine_tuned_fixture):
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()


def _files_digest(root: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*.py") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    for f in sorted(p for p in root.rglob("*.toml") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _cook_digest() -> str:
    """sha256 over the cook sources that determine the sample corpus, its prompts and tokenizer (sample world,
    task definitions, corpus rows, split)."""
    import adnanny_cook

    root = Path(adnanny_cook.__file__).resolve().parent
    h = hashlib.sha256()
    for sub in ("sample", "tasks"):
        h.update(_files_digest(root / sub).encode())
    for name in ("corpus.py", "split.py", "__about__.py"):
        h.update((root / name).read_bytes())
    return h.hexdigest()


def _config(recipe: dict[str, Any], work: Path, threads: int = 0) -> Any:
    """The SFTConfig of a build in ``work`` (the sample world at ``work/sample``)."""
    from adnanny_sft.config import SFTConfig

    sample = work / "sample"
    return SFTConfig(corpus=str(sample / "corpus"), tokenizer=str(sample / "tokenizer"),
                     output_dir=str(work / "run"), progress=False, tensorboard=False, save_every=10**9,
                     keep_checkpoints=1, threads=threads, **recipe["sft"])


def fixture_key(recipe: dict[str, Any]) -> str:
    """Content key: recipe + resolved SFTConfig values + the cook sources that make the corpus + the sft sources
    that build the model + torch/transformers versions.

    WHY not the corpus files themselves: ``make_sample`` output is not byte-identical across processes (string
    hash randomisation reaches its ordering), so a key over its files would rebuild the fixture in every
    pytest session; the sources and the seed determine it up to that ordering. WHY the config's values and not
    config.py: a default that changes changes the build, a reworded help text or a new CLI flag does not."""
    import torch
    import transformers

    cfg = {k: v for k, v in _config(recipe, Path("/fixture")).to_dict().items() if k not in _NOT_BUILD_KEYS}
    h = hashlib.sha256()
    h.update(json.dumps(recipe, sort_keys=True).encode())
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    h.update(_cook_digest().encode())
    h.update(_sources_digest().encode())
    h.update(f"torch {torch.__version__} transformers {transformers.__version__}".encode())
    return h.hexdigest()[:24]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _thin_reasoning(corpus: Path, keep: dict[str, int]) -> None:
    """Keep the reasoning-form training rows of at most ``keep[task]`` inputs per task (label-only rows and the
    eval split untouched), rewriting the corpus in place with its own task definitions.

    WHY: a reasoning row is ~8x a label-only row's target tokens; a few hundred teach the label+reasoning format
    (the tag structure is the same every time) while the relevance signal comes from the many short label-only
    rows, so the build stays inside a CI budget."""
    if not keep:
        return
    import random

    from adnanny_cook.corpus import read_corpus, read_corpus_tasks, write_corpus

    rows = read_corpus(corpus).to_dicts()
    rng = random.Random(0)
    out, seen = [], {}
    for r in sorted(rows, key=lambda r: str(r["id"])):
        if r["split"] == "train" and r["mode"] == "reasoning" and r["task"] in keep:
            seen.setdefault(r["task"], []).append(r)
        else:
            out.append(r)
    for task, rs in seen.items():
        out += rng.sample(rs, min(int(keep[task]), len(rs)))
    write_corpus(out, corpus, tasks=read_corpus_tasks(corpus))


def _build(work: Path, recipe: dict[str, Any], sample_src: Path, threads: int) -> dict[str, Any]:
    from adnanny_sft.train import train

    t0 = time.perf_counter()
    shutil.copytree(sample_src, work / "sample")
    _thin_reasoning(work / "sample" / "corpus", recipe.get("reasoning_inputs") or {})
    result = train(_config(recipe, work, threads))
    assert result.model_dir is not None
    shutil.move(str(result.model_dir), str(work / "model"))
    shutil.rmtree(work / "run" / "checkpoints", ignore_errors=True)
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    return {"recipe": recipe, "steps": result.steps, "train_seconds": round(time.perf_counter() - t0, 1),
            "thresholds": manifest.get("thresholds", {}), "data": manifest.get("data", {})}


def fine_tuned_fixture(*, root: str | os.PathLike[str] | None = None, recipe: dict[str, Any] | None = None,
                       threads: int = 0) -> Path:
    """The exported model directory of the shared fine-tuned tiny model (built on first use, then cached).

    ``root`` overrides the cache folder; ``recipe`` another recipe (tests of the cache itself); ``threads``
    the torch CPU threads of a build (0: torch's default).
    """
    from adnanny_cook.corpus import atomic_write_bytes
    from adnanny_cook.sample import make_sample

    recipe = json.loads(json.dumps(recipe or FIXTURE_RECIPE))
    base = Path(root) if root is not None else fixture_root()
    base.mkdir(parents=True, exist_ok=True)
    key = fixture_key(recipe)
    final = base / key
    if (final / "fixture.json").is_file():
        return final / "model"
    with _locked(base / f"{key}.lock"):
        if (final / "fixture.json").is_file():  # another process built it while we waited
            return final / "model"
        work = base / f".build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            sample = work / ".sample-src"
            t0 = time.perf_counter()
            make_sample(sample, int(recipe["sample"]["seed"]), sizes=recipe["sample"].get("sizes") or None)
            sample_s = time.perf_counter() - t0
            info = _build(work, recipe, sample, threads)
            info["sample_seconds"] = round(sample_s, 1)
            info["build_seconds"] = round(time.perf_counter() - t0, 1)
            shutil.rmtree(sample, ignore_errors=True)
            info["key"] = key
            mf = work / "model" / "adnanny_model.json"  # name the corpus where it will live, not the build dir
            manifest = json.loads(mf.read_text())
            manifest["corpus"] = str(final / "sample" / "corpus")
            atomic_write_bytes(mf, json.dumps(manifest, indent=2, sort_keys=True).encode())
            atomic_write_bytes(work / "fixture.json", json.dumps(info, indent=2, default=str).encode())
            if final.exists():  # a half-published leftover without fixture.json
                shutil.rmtree(final)
            os.rename(work, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final / "model"


def fixture_info(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``fixture.json`` of a fixture model directory (recipe, key, build seconds, thresholds)."""
    return json.loads((Path(model_dir).parent / "fixture.json").read_text(encoding="utf-8"))
