"""The flow engine: a run directory with one folder per stage, a `manifest.json` per stage, skip-if-unchanged,
resume-in-place, one lock, progress.

Run directory (`run_dir`):

    RUN_DIR/
      .adnanny.lock       the FolderLock of the `adnanny run` that owns the directory (adnanny_cook.lock)
      flow.toml           the resolved flow config of the last run (every key, defaults included)
      cook/ train/ ...    one folder per stage: its outputs + manifest.json + stage.log
      report/             report.md, report.html (+ charts/*.png)

A stage's *key* is the sha256 of everything its outputs depend on: its name and `version`, its resolved config
table, the flow's seed, the task definitions' hashes, the user's data files' hashes (and column maps), and the
`outputs_hash` of each stage it requires. Why hash the upstream *outputs* and not its key: a stage rerun with the
same config (its folder deleted, say) may produce different bytes, and what downstream consumed is the bytes. So:
- a done stage whose key is unchanged and whose artifacts exist is skipped (a rerun of an unchanged flow is a
  no-op); a change upstream changes that stage's outputs hash and so every downstream key, which reruns them;
- a stage whose manifest says `running` or `failed` with the same key (the process was killed, or raised) is run
  again *in the same folder*: each package's own resume (cook's chunks, sft/rl checkpoints, label's shards) picks
  up where it stopped;
- a stage whose key changed starts from an empty folder (its old outputs belong to another config).

Manifests are written atomically (temp file + fsync + rename) at the start (`running`) and end (`done` or
`failed`) of each attempt, so `adnanny status` always reads a whole file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adnanny.stage import Stage, StageContext, StageResult

__all__ = ["FlowError", "Manifest", "StagePlan", "dump_toml", "hash_tree", "plan_flow", "read_manifest",
           "run_flow", "MANIFEST", "STAGE_LOG", "SCHEMA"]

MANIFEST = "manifest.json"
STAGE_LOG = "stage.log"
SCHEMA = "adnanny.manifest/1"
#: names in a stage folder that are bookkeeping, not outputs (left out of `outputs_hash`)
_BOOKKEEPING = {MANIFEST, STAGE_LOG, ".adnanny.lock"}
#: files above this size are hashed by size + their first and last 8 MiB (a 700 GB checkpoint is not read
#: twice to notice a change; a re-written shard changes its head or tail or size in practice)
_FULL_HASH_LIMIT = 512 * 1024 * 1024
_PACKAGES = ("adnanny", "adnanny-cook", "adnanny-ckpt", "adnanny-megatron", "adnanny-sft", "adnanny-rl",
             "adnanny-serve", "adnanny-eval", "torch", "transformers", "pydantic")


class FlowError(RuntimeError):
    """A flow-level failure (a stage raised, a requirement is missing, the run dir is locked); names the stage."""


class Manifest(BaseModel):
    """`RUN_DIR/<stage>/manifest.json`. The report, `status` and `lineage` read only this."""

    model_config = ConfigDict(extra="forbid")

    schema_: str = Field(SCHEMA, alias="schema")
    stage: str
    status: Literal["running", "done", "failed"]
    key: str = Field(description="sha256 of everything the outputs depend on (see module docstring)")
    attempts: int = Field(ge=1)
    started_at: str
    finished_at: str | None = None
    wall_s: float | None = Field(None, description="seconds of the finished attempts (a killed attempt's time "
                                                   "is unknown and not counted)")
    requires: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict, description="this stage's resolved config table")
    flow: dict[str, Any] = Field(default_factory=dict, description="the flow-level keys it ran under")
    tasks: dict[str, str] = Field(default_factory=dict, description="task name -> definition sha256")
    inputs: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="upstream stages and data files with their hashes")
    versions: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    lineage: dict[str, str] = Field(default_factory=dict)
    outputs_hash: str | None = None
    resumed: bool = False
    error: str | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


# ---------------------------------------------------------------------------------------------------- small I/O
def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _jsonable(x: Any) -> Any:
    """Metrics as strict JSON: NaN/inf -> null (the report prints "not measured"), numpy scalars -> Python."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item) and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (TypeError, ValueError):
            pass
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"value {x!r} of type {type(x).__name__} is not JSON-able")


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (adnanny-cook's temp + fsync + rename)."""
    from adnanny_cook.corpus import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode())


def read_manifest(folder: str | os.PathLike[str]) -> Manifest | None:
    """The manifest of a stage folder, None if there is none; an unreadable one raises naming the file."""
    p = Path(folder) / MANIFEST
    if not p.is_file():
        return None
    try:
        return Manifest.model_validate(json.loads(p.read_text(encoding="utf-8")))
    except (ValueError, OSError) as e:
        raise FlowError(f"manifest `{p}` is not a valid adnanny manifest: {str(e).splitlines()[0]}") from None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        else:
            h.update(f"size={size}".encode())
            h.update(f.read(8 << 20))
            f.seek(size - (8 << 20))
            h.update(f.read(8 << 20))
    return h.hexdigest()


def hash_tree(folder: str | os.PathLike[str]) -> str:
    """sha256 over a folder's files (sorted relative paths + contents), bookkeeping files left out: the stage's
    own manifest.json and stage.log, every package's `.adnanny.lock` (it records a PID), temp files."""
    root = Path(folder)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or p.is_symlink() and not p.exists():
            continue
        if rel.parts[0] in _BOOKKEEPING or p.name == ".adnanny.lock" or \
                any(part.startswith(".") and part.endswith(".tmp") for part in rel.parts):
            continue
        h.update(str(rel.as_posix()).encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------------------------------------------- TOML
def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: Mapping[str, Any], _prefix: str = "") -> str:
    """A small TOML writer for configs (None values are left out: TOML has no null, and absent = default)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(str(k))} = {_toml_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in tables:
        name = f"{_prefix}{_toml_key(str(k))}"
        if isinstance(v, list):
            for item in v:
                out += f"\n[[{name}]]\n" + dump_toml(item, name + ".")
        else:
            body = dump_toml(v, name + ".")
            out += f"\n[{name}]\n" + body
    return out


# ---------------------------------------------------------------------------------------------------- planning
@dataclass
class StagePlan:
    """What the engine will do (or did) with one stage."""

    name: str
    action: Literal["skip", "run", "resume", "rerun", "external"]
    reason: str
    key: str | None = None


def _data_inputs(cfg: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for task, d in sorted(cfg.data.items()):
        p = Path(d.path)
        out[f"data.{task}"] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None,
                               "columns": dict(d.columns)}
    return out


def _flow_keys(cfg: Any) -> dict[str, Any]:
    return {"seed": cfg.seed, "deterministic": cfg.deterministic, "tasks": list(cfg.tasks),
            "data": {k: v.model_dump(mode="json") for k, v in cfg.data.items()}}


def stage_key(stage: Stage, cfg: Any, upstream: Mapping[str, str | None], tasks: Mapping[str, str],
              data: Mapping[str, Any]) -> str:
    blob = {
        "stage": stage.name, "version": str(getattr(stage, "version", "")),
        "config": getattr(cfg, stage.name).model_dump(mode="json"),
        "seed": cfg.seed, "deterministic": cfg.deterministic, "tasks": dict(sorted(tasks.items())),
        "data": {k: {"sha256": v["sha256"], "columns": v["columns"]} for k, v in data.items()},
        "upstream": dict(sorted(upstream.items())),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _artifacts_present(out: Path, m: Manifest) -> list[str]:
    return [f"{k} ({v})" for k, v in m.artifacts.items() if not (out / v).exists()]


def _present(st: Stage, have: Mapping[str, Any]) -> list[str]:
    """The stage's requirements this flow provides (an optional one may be absent)."""
    return [r for r in st.requires if r in have]


def _required_outside(cfg: Any, stages: Mapping[str, Stage], run_dir: Path) -> dict[str, Manifest]:
    """Requirements of the selected stages that are not selected: they must be done in the run dir already,
    unless the stage lists them in `optional_requires`."""
    selected = list(cfg.stages)
    outside: dict[str, Manifest] = {}
    for name in selected:
        for req in stages[name].requires:
            if req in selected or req in outside:
                continue
            m = read_manifest(run_dir / req) if (run_dir / req).is_dir() else None
            if (m is None or m.status != "done") and req in getattr(stages[name], "optional_requires", ()):
                continue  # an optional input that this flow does not make (align switched off, say)
            if m is None or m.status != "done":
                raise FlowError(f"stage `{name}` requires `{req}`, which is neither in `stages` ({selected}) nor "
                                f"done in `{run_dir}`; add `{req}` to `stages`")
            outside[req] = m
    return outside


def plan_flow(cfg: Any, stages: Mapping[str, Stage]) -> list[StagePlan]:
    """What `run_flow` would do now, stage by stage, without running anything (for `--dry-run` and `status`).

    A stage downstream of one that will run is planned `run` ("upstream changes"): its key is only known once the
    upstream's new outputs exist."""
    run_dir = Path(cfg.run_dir)
    tasks = cfg.task_hashes()
    data = _data_inputs(cfg)
    hashes: dict[str, str | None] = {n: m.outputs_hash for n, m in _required_outside(cfg, stages, run_dir).items()}
    plans: list[StagePlan] = [StagePlan(n, "external", "required, not selected: its finished folder is used",
                                        None) for n in hashes]
    dirty: set[str] = set()
    for name in cfg.stages:
        st = stages[name]
        if any(r in dirty for r in st.requires):
            plans.append(StagePlan(name, "run", f"upstream {[r for r in st.requires if r in dirty]} will run"))
            dirty.add(name)
            continue
        key = stage_key(st, cfg, {r: hashes.get(r) for r in _present(st, hashes)}, tasks, data)
        m = read_manifest(run_dir / name) if (run_dir / name).is_dir() else None
        if m is None:
            action, why = "run", "not run yet"
        elif m.key != key:
            action, why = "rerun", "config, tasks, data or upstream outputs changed"
        elif m.status in ("running", "failed"):
            action, why = "resume", f"attempt {m.attempts} {'was interrupted' if m.status == 'running' else 'failed'}"
        elif missing := _artifacts_present(run_dir / name, m):
            action, why = "rerun", f"artifacts missing: {missing}"
        else:
            action, why = "skip", f"unchanged since {m.finished_at}"
        plans.append(StagePlan(name, action, why, key))  # type: ignore[arg-type]
        if action == "skip":
            hashes[name] = m.outputs_hash if m else None
        else:
            dirty.add(name)
    return plans


# ---------------------------------------------------------------------------------------------------- running
def _clear(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _relpath(p: Path, run_dir: Path) -> str:
    """A lineage path relative to the run dir when inside it (a moved run dir keeps its lineage), else absolute."""
    try:
        return p.resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(p)


def _lineage_path(v: str, out: Path, run_dir: Path) -> str:
    """A lineage value as a path relative to the run dir (or absolute outside it); a value that names no existing
    path (a stage's note such as `source_stage = "align"`) is kept as written."""
    p = Path(v) if Path(v).is_absolute() else out / v
    return _relpath(p, run_dir) if p.exists() else v


def _what_changed(old: Manifest, new: Mapping[str, Any]) -> str:
    """Why a finished stage's key changed, in words (the log line of a rerun)."""
    parts: list[str] = []
    keys = sorted(k for k in set(old.config) | set(new["config"]) if old.config.get(k) != new["config"].get(k))
    if keys:
        parts.append(f"config keys {keys}")
    if old.flow.get("seed") != new["flow"].get("seed"):
        parts.append("seed")
    if old.tasks != new["tasks"]:
        parts.append("task definitions")
    ups = [k for k, v in new["inputs"].items() if old.inputs.get(k, {}).get("outputs_hash", old.inputs.get(k, {})
                                                                             .get("sha256")) !=
           v.get("outputs_hash", v.get("sha256"))]
    if ups:
        parts.append(f"inputs {ups}")
    return ", ".join(parts) or "the stage's version"


def _check_result(name: str, res: Any, out: Path) -> StageResult:
    if not isinstance(res, StageResult):
        raise FlowError(f"stage `{name}` returned {type(res).__name__}, not a StageResult")
    for k, v in res.artifacts.items():
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise FlowError(f"stage `{name}`: artifact `{k}` = {v!r} must be a path inside its folder `{out}`")
        if not (out / v).exists():
            raise FlowError(f"stage `{name}`: artifact `{k}` = {v!r} does not exist in `{out}`")
    return res


class _Log:
    """`ctx.log`: prints `[stage] message` and appends it to the stage's `stage.log`."""

    def __init__(self, name: str, out: Path, echo: Callable[[str], None]) -> None:
        self.name, self.path, self.echo = name, out / STAGE_LOG, echo

    def __call__(self, msg: str) -> None:
        self.echo(f"  [{self.name}] {msg}")
        with self.path.open("a", encoding="utf-8") as f:
            f.write(f"{_now()} {msg}\n")


@contextlib.contextmanager
def deterministic_torch(on: bool = True) -> Iterator[None]:
    """torch's deterministic algorithms (warn-only where an op has none) while the flow runs; the previous
    setting is restored after.

    WHY: on CPU with more than one thread some kernels accumulate in a thread-dependent order; two runs of the
    same training recipe differed by 1e-6 at step 2 and by 0.7 in loss at step 30 (lr 3e-3 amplifies it), and
    two `adnanny run`s of the default with seed 0 reported AdNanny BACC 47.5 and 59.4. With this on, the
    same 20 steps repeat bit for bit (measured on the 2-core machine). On CUDA, cuBLAS needs
    CUBLAS_WORKSPACE_CONFIG for it; it is set when unset."""
    if not on:
        yield
        return
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def run_flow(cfg: Any, stages: Mapping[str, Stage], *, log: Callable[[str], None] = print,
             report: bool = True) -> dict[str, Manifest]:
    """Run the selected stages of `cfg` in order under the run dir's lock; returns name -> final manifest.

    Skips unchanged stages, resumes interrupted ones in place, reruns changed ones from an empty folder (module
    docstring). A stage that raises gets a `failed` manifest naming the error and stops the flow with `FlowError`.
    `report=True` writes RUN_DIR/report/ at the end (adnanny.report)."""
    from adnanny_cook.lock import FolderLock

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(run_dir, "adnanny run"), deterministic_torch(cfg.deterministic):
        from adnanny_cook.corpus import atomic_write_bytes

        atomic_write_bytes(run_dir / "flow.toml", dump_toml(cfg.model_dump(mode="json")).encode())
        tasks = cfg.task_hashes()
        data = _data_inputs(cfg)
        vers = versions()
        done: dict[str, Manifest] = dict(_required_outside(cfg, stages, run_dir))
        n = len(cfg.stages)
        for i, name in enumerate(cfg.stages, 1):
            st = stages[name]
            out = run_dir / name
            have = _present(st, done)
            upstream = {r: done[r].outputs_hash for r in have}
            key = stage_key(st, cfg, upstream, tasks, data)
            old = read_manifest(out) if out.is_dir() else None
            if old and old.key == key and old.status == "done" and not _artifacts_present(out, old):
                log(f"[{i}/{n}] {name}: skipped (unchanged since {old.finished_at})")
                done[name] = old
                continue
            resume = bool(old and old.key == key)
            if out.is_dir() and not resume and any(out.iterdir()):
                _clear(out)
            out.mkdir(parents=True, exist_ok=True)
            attempts = (old.attempts + 1) if resume and old else 1
            prev_wall = (old.wall_s or 0.0) if resume and old and old.status != "done" else 0.0
            base = dict(stage=name, key=key, attempts=attempts, started_at=_now(), requires=have,
                        config=getattr(cfg, name).model_dump(mode="json"), flow=_flow_keys(cfg), tasks=tasks,
                        inputs={**{r: {"path": _relpath(run_dir / r, run_dir), "outputs_hash": done[r].outputs_hash}
                                   for r in have}, **data},
                        versions=vers, resumed=resume)
            write_json(out / MANIFEST, Manifest(status="running", **base).dump())
            how = f"resuming (attempt {attempts})" if resume else \
                ("running" if old is None else f"rerunning ({_what_changed(old, base)})")
            log(f"[{i}/{n}] {name}: {how} -> {out}")
            ctx = StageContext(name=name, out=out, run_dir=run_dir,
                               inputs={r: run_dir / r for r in have}, config=getattr(cfg, name), flow=cfg,
                               log=_Log(name, out, log))
            t0 = time.perf_counter()
            try:
                res = _check_result(name, st.run(ctx), out)
                metrics = _jsonable(res.metrics)
            except BaseException as e:
                wall = prev_wall + time.perf_counter() - t0
                err = f"{type(e).__name__}: {e}".splitlines()[0] if str(e) else type(e).__name__
                write_json(out / MANIFEST, Manifest(status="failed", finished_at=_now(), wall_s=wall, error=err,
                                                    **base).dump())
                log(f"[{i}/{n}] {name}: FAILED after {wall:.1f} s: {err}")
                if isinstance(e, Exception):
                    raise FlowError(f"stage `{name}` failed: {err} (fix it and rerun `adnanny run`: finished "
                                    f"stages are kept, `{name}` resumes in `{out}`)") from e
                raise
            wall = prev_wall + time.perf_counter() - t0
            lineage = {k: _lineage_path(str(v), out, run_dir) for k, v in res.lineage.items()}
            m = Manifest(status="done", finished_at=_now(), wall_s=round(wall, 3), metrics=metrics,
                         artifacts=dict(res.artifacts), notes=list(res.notes), lineage=lineage,
                         outputs_hash=hash_tree(out), **base)
            write_json(out / MANIFEST, m.dump())
            log(f"[{i}/{n}] {name}: done in {wall:.1f} s")
            done[name] = m
        if report:
            from adnanny.report import write_report

            paths = write_report(run_dir)
            log(f"report: {paths['md']} and {paths['html']}")
    return done


def stage_states(run_dir: str | os.PathLike[str], order: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Per stage folder: name, state (done / running / interrupted / failed / missing), wall time, attempts.

    `running` vs `interrupted`: a manifest that says running while nobody holds the run dir's lock was killed."""
    from adnanny import stages as pkg
    from adnanny_cook.lock import FolderLock, FolderLockedError

    rd = Path(run_dir)
    if not rd.is_dir():
        raise FlowError(f"run directory `{rd}` does not exist")
    held = False
    try:
        with FolderLock(rd, "adnanny status"):
            pass
    except FolderLockedError:
        held = True
    names = list(order or pkg.STAGE_ORDER)
    names += sorted(p.name for p in rd.iterdir() if (p / MANIFEST).is_file() and p.name not in names)
    rows = []
    for name in names:
        m = read_manifest(rd / name) if (rd / name).is_dir() else None
        if m is None:
            rows.append({"stage": name, "state": "not run", "wall_s": None, "attempts": 0, "finished_at": None,
                         "error": None})
            continue
        state = m.status if m.status != "running" or held else "interrupted"
        rows.append({"stage": name, "state": state, "wall_s": m.wall_s, "attempts": m.attempts,
                     "finished_at": m.finished_at, "error": m.error})
    return rows
