"""Running benchmarks on a model: resumable per task, and the Table 8 comparison of several models.

Resume. With an output folder, every task of a model keeps ``<out>/<model>/<task>/items.jsonl``: one JSON
line per scored item, appended and fsynced after each chunk, next to ``meta.json`` (model dir, data file and
its SHA-256, few-shot and generation settings). A run that was killed (even ``kill -9``, mid-line) reads the
lines back, drops a torn last line, and scores only the items not yet there; scoring is deterministic
(log-likelihoods, greedy decoding), so the final scores equal an uninterrupted run's. A folder written with
other settings is refused rather than mixed. The task's summary ``<out>/<model>/<task>.json`` and the
model's ``results.json`` are written atomically once the task is complete.

Engines come from adnanny-serve (``load_engine``: transformers on CPU/GPU, or vLLM); model names such as
``smollm2`` are resolved by adnanny-ckpt's ``resolve_model``. Both are imported only when a model runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adnanny_eval.bench.metrics import (
    extract_flexible,
    extract_strict,
    gsm8k_gold,
    mc_outcome,
    mean_stderr,
    normalize_answer,
    paired_stderr,
)
from adnanny_eval.bench.tasks import (
    GSM8K_STOP,
    MC_TASKS,
    TASK_NAMES,
    BenchError,
    GenItem,
    MCItem,
    file_sha256,
    find_data_file,
    gsm8k_prompt,
    load_items,
    mc_requests,
)
from adnanny_eval.io import atomic_write_text

__all__ = [
    "PRIMARY_METRIC",
    "BenchConfig",
    "BenchResult",
    "TaskResult",
    "data_dir_from",
    "run_bench",
    "run_table8",
    "run_task",
]

#: The score each task contributes to Table 8.
PRIMARY_METRIC = {"arc_challenge": "acc_norm", "hellaswag": "acc_norm", "gsm8k": "exact_match_strict"}
_METRICS = {"mc": ("acc", "acc_norm"), "gen": ("exact_match_strict", "exact_match_flexible")}
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``limit``: the first N scored items of each task (file order, after GSM8K's exemplars)."""

    data_dir: Path
    tasks: tuple[str, ...] = TASK_NAMES
    limit: int | None = None
    out: Path | None = None
    batch_size: int = 32
    num_fewshot: int = 5  # GSM8K exemplars (the harness' default)
    max_gen_tokens: int = 256
    engine: str = "transformers"
    device: str = "cpu"
    dtype: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        tasks = tuple(t.strip() for t in self.tasks if t.strip())
        bad = [t for t in tasks if t not in TASK_NAMES]
        if bad or not tasks:
            raise BenchError(f"unknown task(s) {bad or 'none given'}; choose from {', '.join(TASK_NAMES)}")
        if len(set(tasks)) != len(tasks):
            raise BenchError(f"a task is listed twice in {list(tasks)}")
        object.__setattr__(self, "tasks", tasks)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise BenchError(f"`limit` must be an integer >= 1; got {self.limit!r}")
        for name in ("batch_size", "max_gen_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise BenchError(f"`{name}` must be an integer >= 1; got {v!r}")
        if not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise BenchError(f"`num_fewshot` must be an integer >= 0; got {self.num_fewshot!r}")


@dataclass
class TaskResult:
    """One task's scores (fractions) with standard errors, and the per-item 0/1 outcomes behind them."""

    task: str
    n: int
    metrics: dict[str, float]
    stderr: dict[str, float]
    per_item: dict[str, list[int]] = field(repr=False)
    item_index: list[int] = field(repr=False)
    num_fewshot: int = 0
    seconds: float = 0.0  # wall time of the items scored in this run (resumed items excluded)
    scored_now: int = 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"n": self.n, "num_fewshot": self.num_fewshot}
        for k, v in self.metrics.items():
            d[k] = v
            d[f"{k}_stderr"] = None if math.isnan(self.stderr[k]) else self.stderr[k]
        d["seconds"] = round(self.seconds, 3)
        d["scored_now"] = self.scored_now
        return d


@dataclass
class BenchResult:
    """All tasks of one model."""

    model: str
    model_dir: str
    tasks: dict[str, TaskResult]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "model_dir": self.model_dir,
                "tasks": {t: r.to_dict() for t, r in self.tasks.items()}}


def data_dir_from(value: str | os.PathLike[str] | None) -> Path:
    """``--data-dir``, else ``$ADNANNY_BENCH_DATA``; there is no default (the data is not shipped)."""
    v = value if value is not None else os.environ.get("ADNANNY_BENCH_DATA")
    if not v:
        raise BenchError("no benchmark data: pass `--data-dir DIR` (a folder with arc_challenge/, hellaswag/, "
                         "gsm8k/ as in ../shared/data) or set ADNANNY_BENCH_DATA")
    p = Path(v)
    if not p.is_dir():
        raise BenchError(f"`--data-dir` `{p}` is not a folder")
    return p


def model_tag(name: str, model_dir: Path) -> str:
    """Folder-safe, collision-free name of a model: its given name (or dir name) + a short path hash."""
    base = Path(name).name if Path(name).is_dir() else name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "model"
    return f"{base}-{hashlib.sha1(str(model_dir.resolve()).encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------- store
class _Store:
    """Append-only per-item records of one (model, task), with a torn-tail-tolerant reader."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = folder
        self.path = folder / "items.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text(encoding="utf-8"))
            diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
            if diff:
                raise BenchError(f"`{folder}` holds results of another setting ({', '.join(diff)} differ: "
                                 f"{ {k: old.get(k) for k in diff} } vs { {k: meta.get(k) for k in diff} }); "
                                 "use another `--out` or delete that folder")
        else:
            atomic_write_text(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")

    def load(self) -> dict[int, dict[str, Any]]:
        if not self.path.is_file():
            return {}
        data = self.path.read_bytes()
        out: dict[int, dict[str, Any]] = {}
        good = 0
        lines = data.split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                good += len(line) + 1
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines) - 1:  # a torn last line (killed mid-write): drop it, rescore that item
                    break
                raise BenchError(f"`{self.path}` line {n + 1} is not JSON ({exc}); delete the folder to rescore") from exc
            if n == len(lines) - 1:  # complete JSON but no newline: keep it, finish the line
                with open(self.path, "ab") as fh:
                    fh.write(b"\n")
            out[int(rec["i"])] = rec
            good += len(line) + 1
        if good < len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
        return out

    def append(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------- tasks
def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the [bench] extra
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="item", disable=not enabled or None,
                file=sys.stderr, dynamic_ncols=True)


def _score_mc(engine: Any, items: list[MCItem]) -> list[dict[str, Any]]:
    reqs = [r for it in items for r in mc_requests(it)]
    lls = engine.loglikelihood(reqs)
    out, k = [], 0
    for it in items:
        part = lls[k:k + len(it.choices)]
        k += len(it.choices)
        vals = [float(x.logprob) for x in part]
        out.append({"i": it.index, "id": it.id, "gold": it.gold, "lls": vals,
                    **mc_outcome(vals, it.choices, it.gold)})
    return out


def _score_gen(engine: Any, items: list[GenItem], shots: list[GenItem], max_tokens: int) -> list[dict[str, Any]]:
    from adnanny_serve.engines import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=GSM8K_STOP)
    gens = engine.generate([gsm8k_prompt(shots, it) for it in items], params)
    out = []
    for it, g in zip(items, gens):
        gold = gsm8k_gold(it.answer)
        strict, flexible = extract_strict(g.text), extract_flexible(g.text)
        out.append({"i": it.index, "id": it.id, "gold": gold, "completion": g.text,
                    "strict": strict, "flexible": flexible,
                    "exact_match_strict": int(normalize_answer(strict) == gold),
                    "exact_match_flexible": int(normalize_answer(flexible) == gold)})
    return out


def run_task(engine: Any, task: str, cfg: BenchConfig, *, store_dir: Path | None = None,
             model_dir: str = "", label: str = "") -> TaskResult:
    """Score ``task`` with ``engine`` (anything with ``loglikelihood`` / ``generate``), resuming from ``store_dir``."""
    path = find_data_file(cfg.data_dir, task)
    items = load_items(path, task)
    kind = "mc" if task in MC_TASKS else "gen"
    shots: list[GenItem] = []
    if kind == "gen":
        if cfg.num_fewshot >= len(items):
            raise BenchError(f"`num_fewshot` {cfg.num_fewshot} leaves no `{task}` item to score in `{path}`")
        shots = list(items[: cfg.num_fewshot])  # type: ignore[arg-type]
        items = items[cfg.num_fewshot:]
    scored = list(items[: cfg.limit] if cfg.limit else items)
    done: dict[int, dict[str, Any]] = {}
    store = None
    if store_dir is not None:
        meta = {"format": FORMAT_VERSION, "task": task, "model_dir": model_dir, "data_file": str(path.resolve()),
                "data_sha256": file_sha256(path), "num_fewshot": cfg.num_fewshot if kind == "gen" else 0,
                "max_gen_tokens": cfg.max_gen_tokens if kind == "gen" else None}
        store = _Store(store_dir, meta)
        done = store.load()
    todo = [it for it in scored if it.index not in done]
    chunk = cfg.batch_size  # items per checkpoint (MC: ~4 engine batches of choices)
    bar = _progress(len(scored), len(scored) - len(todo), f"{label} {task}".strip(), cfg.progress)
    t0 = time.perf_counter()
    try:
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            recs = (_score_mc(engine, part) if kind == "mc"  # type: ignore[arg-type]
                    else _score_gen(engine, part, shots, cfg.max_gen_tokens))  # type: ignore[arg-type]
            if store is not None:
                store.append(recs)
            done.update({r["i"]: r for r in recs})
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    recs = [done[it.index] for it in scored]
    per_item = {m: [int(r[m]) for r in recs] for m in _METRICS[kind]}
    metrics, stderr = {}, {}
    for m, vals in per_item.items():
        metrics[m], stderr[m] = mean_stderr(vals)
    res = TaskResult(task=task, n=len(recs), metrics=metrics, stderr=stderr, per_item=per_item,
                     item_index=[it.index for it in scored], num_fewshot=len(shots), seconds=seconds,
                     scored_now=len(todo))
    if store_dir is not None:
        atomic_write_text(store_dir.parent / f"{task}.json", json.dumps(res.to_dict(), indent=1) + "\n")
    return res


def _resolve(model: str) -> Path:
    from adnanny_ckpt.models import resolve_model

    try:
        return Path(resolve_model(model))
    except ValueError as exc:  # UnknownModelError names the known names
        raise BenchError(str(exc)) from exc


def run_bench(model: str, cfg: BenchConfig, *, engine: Any = None) -> BenchResult:
    """All of ``cfg.tasks`` on one model (an HF dir or a built-in name); ``engine`` overrides loading."""
    model_dir = _resolve(model) if engine is None else Path(str(model))
    tag = model_tag(model, model_dir)
    if engine is None:
        from adnanny_serve.engines import load_engine

        engine = load_engine(str(model_dir), engine=cfg.engine, device=cfg.device, dtype=cfg.dtype,
                             batch_size=cfg.batch_size)
    results = {}
    for task in cfg.tasks:
        store = None if cfg.out is None else cfg.out / tag / task
        results[task] = run_task(engine, task, cfg, store_dir=store, model_dir=str(model_dir), label=tag)
    res = BenchResult(model=str(model), model_dir=str(model_dir), tasks=results)
    if cfg.out is not None:
        atomic_write_text(cfg.out / tag / "results.json", json.dumps(res.to_dict(), indent=1) + "\n")
    return res


def _column_names(models: Sequence[str]) -> list[str]:
    """Table column names: the given names (dir names for paths), made unique."""
    names: list[str] = []
    for m in models:
        base = Path(m).name if Path(m).is_dir() else m
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


def run_table8(baseline: str, candidates: Sequence[str], cfg: BenchConfig,
               *, engines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every model, then Table 8 (adnanny-eval's regression table) with paired standard errors.

    Returns ``{"models": {name: BenchResult.to_dict()}, "table": RegressionTable.to_dict(), "paired":
    {candidate: {task: {"metric", "diff", "stderr"}}}, "markdown": str}``; with ``cfg.out`` also writes
    ``table8.md`` and ``table8.json`` there.
    """
    import polars as pl

    from adnanny_eval.regression import regression_table
    from adnanny_eval.report import markdown_table

    if not candidates:
        raise BenchError("Table 8 needs at least one `--candidate` beside the `--baseline`")
    models = [baseline, *candidates]
    names = _column_names(models)
    runs = {n: run_bench(m, cfg, engine=(engines or {}).get(m)) for n, m in zip(names, models)}
    bench_names = [f"{t} ({PRIMARY_METRIC[t]})" for t in cfg.tasks]
    frame = pl.DataFrame({"benchmark": bench_names,
                          **{n: [runs[n].tasks[t].metrics[PRIMARY_METRIC[t]] for t in cfg.tasks] for n in names}})
    table = regression_table(frame, baseline=names[0])
    paired: dict[str, dict[str, dict[str, Any]]] = {}
    rows = []
    for n in names[1:]:
        paired[n] = {}
        for t in cfg.tasks:
            m = PRIMARY_METRIC[t]
            a, b = runs[names[0]].tasks[t], runs[n].tasks[t]
            if a.item_index != b.item_index:  # same data and limit make this impossible; guard anyway
                raise BenchError(f"`{t}`: {names[0]} and {n} were scored on different items")
            diff, se = paired_stderr(a.per_item[m], b.per_item[m])
            paired[n][t] = {"metric": m, "diff": diff, "stderr": None if math.isnan(se) else se, "n": a.n}
            rows.append([t, m, n, f"{diff * 100:+.2f}", "n/a" if math.isnan(se) else f"{se * 100:.2f}", str(a.n)])
    md = (table.to_markdown() + "\nPaired differences (candidate − baseline, same items; percentage points):\n\n"
          + markdown_table(["task", "metric", "candidate", "diff", "paired s.e.", "n"], rows) + "\n")
    out = {"models": {n: r.to_dict() for n, r in runs.items()}, "table": table.to_dict(), "paired": paired,
           "markdown": md}
    if cfg.out is not None:
        atomic_write_text(cfg.out / "table8.md", md)
        atomic_write_text(cfg.out / "table8.json", json.dumps({k: v for k, v in out.items() if k != "markdown"},
                                                              indent=1) + "\n")
    return out
