"""Batch labeling: a Parquet of inputs -> a predictions Parquet (the file adnanny-eval reads).

Contract of the output (one row per input row, in input order):
``id``, ``task``, ``mode``, one column per label field named as in the task schema (``label``,
``location_label``, ``quality_label`` for query_ad), ``score`` (P(non-defect) of the task's first field with
defect values, see :mod:`adnanny_serve.scoring`), ``score_<field>`` for its other defect-bearing fields,
``label_probs`` (JSON {field: {value: p}}), ``reasoning``, ``raw``, ``prompt_tokens``, ``completion_tokens``,
``finish_reason`` and ``parse_error``. A row whose output does not parse keeps null labels and scores and
the parser's message in ``parse_error`` — never a default label.

Resumable without doing a row twice or losing one: the input is cut into fixed chunks of ``chunk_size`` rows
by position; each finished chunk is written atomically as ``<out>.parts/chunk-NNNNNN.parquet``. A restarted job
reads ``state.json`` (it must describe the same input, task, mode and chunking) and skips chunks whose file
exists. The final file is assembled, checked (every input id exactly once) and renamed into place, and only
then are the parts removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adnanny_serve.errors import ConfigError, LabelError

__all__ = ["LabelConfig", "LabelStats", "label_file", "label_rows", "predictions_schema", "prompts_for"]

MODES = ("label", "reasoning")


@dataclass
class LabelConfig:
    """Settings of ``adnanny-serve label`` (TOML keys == CLI flags with ``-`` -> ``_``)."""

    model: str = ""
    task: str = ""
    input: str = ""
    out: str = ""
    mode: str = "label"
    engine: str = "transformers"
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int = 8
    chunk_size: int = 64
    max_tokens: int | None = None  # default: 32 in label mode, 512 in reasoning mode
    top_logprobs: int = 20
    example: bool = False
    executor: str = "local"
    num_workers: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        errs = []
        for key in ("model", "task", "input", "out"):
            if not getattr(self, key):
                errs.append(f"`{key}` is required")
        if self.mode not in MODES:
            errs.append(f"`mode` must be one of {list(MODES)}; got {self.mode!r}")
        if self.executor not in ("local", "ray"):
            errs.append(f"`executor` must be 'local' or 'ray'; got {self.executor!r}")
        for key in ("batch_size", "chunk_size", "num_workers"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                errs.append(f"`{key}` must be an integer >= 1; got {v!r}")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            errs.append(f"`max_tokens` must be an integer >= 1; got {self.max_tokens!r}")
        if not isinstance(self.top_logprobs, int) or self.top_logprobs < 1:
            errs.append(f"`top_logprobs` must be an integer >= 1; got {self.top_logprobs!r}")
        if errs:
            raise ConfigError("invalid label config: " + "; ".join(errs) + ".")

    @property
    def resolved_max_tokens(self) -> int:
        return self.max_tokens if self.max_tokens is not None else (32 if self.mode == "label" else 512)


@dataclass
class LabelStats:
    """What a run did (``--json`` prints this)."""

    out: str
    rows: int
    rows_done_now: int
    chunks_skipped: int
    parse_errors: int
    seconds: float
    samples_per_s: float
    avg_prompt_tokens: float
    avg_completion_tokens: float
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- schema
def _score_fields(task: Any) -> list[str]:
    return [f for f in task.field_order if task.defect_values.get(f) and task.label_fields.get(f)]


def predictions_schema(task: Any) -> dict[str, Any]:
    """Polars schema of the predictions file for ``task`` (fixed, so an all-error chunk keeps its types)."""
    import polars as pl

    schema: dict[str, Any] = {"id": pl.Utf8, "task": pl.Utf8, "mode": pl.Utf8}
    for f, allowed in task.label_fields.items():
        schema[f] = pl.Int64 if allowed and isinstance(allowed[0], int) else pl.Utf8
    schema["score"] = pl.Float64
    for f in _score_fields(task)[1:]:
        schema[f"score_{f}"] = pl.Float64
    schema.update({"label_probs": pl.Utf8, "reasoning": pl.Utf8, "raw": pl.Utf8, "prompt_tokens": pl.Int64,
                   "completion_tokens": pl.Int64, "finish_reason": pl.Utf8, "parse_error": pl.Utf8})
    return schema


# ----------------------------------------------------------------------------------------- inputs
def _read_inputs(path: Path, task: Any) -> list[dict[str, Any]]:
    """Rows with ``id`` and the task's input fields, from columns or from a corpus-style ``input`` JSON."""
    import polars as pl

    if not path.is_file():
        raise LabelError(f"`input` file {str(path)!r} does not exist.")
    try:
        df = pl.read_parquet(path)
    except Exception as e:
        raise LabelError(f"`input` {str(path)!r} is not a readable Parquet file: {e}") from e
    if "id" not in df.columns:
        raise LabelError(f"`input` {str(path)!r} has no `id` column; columns are {df.columns}.")
    have_cols = all(f in df.columns for f in task.input_fields)
    if not have_cols and "input" not in df.columns:
        missing = [f for f in task.input_fields if f not in df.columns]
        raise LabelError(
            f"`input` {str(path)!r} lacks the input columns {missing} of task `{task.name}` and has no `input` "
            "JSON column; give one column per input field or a corpus-style `input` column."
        )
    if "task" in df.columns:
        other = df.filter(pl.col("task") != task.name)
        if other.height:
            raise LabelError(
                f"`input` {str(path)!r} row {other['id'][0]!r} has task {other['task'][0]!r}, not `{task.name}`; "
                "filter the file to one task (`--task` must match)."
            )
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, rec in enumerate(df.iter_rows(named=True)):
        rid = rec["id"]
        if rid is None or str(rid) == "":
            raise LabelError(f"`input` {str(path)!r} row {n} has an empty `id`; every row needs a unique id.")
        rid = str(rid)
        if rid in seen:
            raise LabelError(f"`input` {str(path)!r} row {n}: `id` {rid!r} appears twice; ids must be unique.")
        seen.add(rid)
        if have_cols:
            inp = {f: rec[f] for f in task.input_fields}
        else:
            try:
                inp = json.loads(rec["input"])
            except (TypeError, ValueError) as e:
                raise LabelError(f"`input` {str(path)!r} row {n} (id {rid!r}): `input` is not JSON: {e}") from e
        missing = task.missing_inputs(inp)
        if missing:
            raise LabelError(
                f"`input` {str(path)!r} row {n} (id {rid!r}) misses input fields {missing} of task `{task.name}`."
            )
        rows.append({"id": rid, **inp})
    return rows


def prompts_for(engine: Any, task: Any, rows: Iterable[dict[str, Any]], mode: str, example: bool) -> list[str]:
    """Rendered prompts (task messages through the engine's chat template)."""
    return [engine.apply_chat_template(task.render_messages(r, mode=mode, example=example)) for r in rows]


# ----------------------------------------------------------------------------------------- labeling
def label_rows(engine: Any, task: Any, rows: list[dict[str, Any]], *, mode: str, max_tokens: int,
               top_logprobs: int = 20, example: bool = False) -> list[dict[str, Any]]:
    """Label ``rows`` with one batched ``engine.generate`` call; returns prediction records."""
    from adnanny_cook.tasks import ParseError

    from adnanny_serve.engines.base import SamplingParams
    from adnanny_serve.scoring import field_value_probs

    if mode not in MODES:
        raise ConfigError(f"`mode` must be one of {list(MODES)}; got {mode!r}.")
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0,
        stop=tuple(task.label_stop) if mode == "label" else (),
        include_stop_str_in_output=True, logprobs=top_logprobs,
    )
    gens = engine.generate(prompts_for(engine, task, rows, mode, example), params)
    score_fields = _score_fields(task)
    out = []
    for row, g in zip(rows, gens):
        rec: dict[str, Any] = {"id": row["id"], "task": task.name, "mode": mode, "raw": g.text,
                               "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                               "finish_reason": g.finish_reason, "reasoning": None, "parse_error": None,
                               "score": None, "label_probs": None}
        for f in task.label_fields:
            rec[f] = None
        for f in score_fields[1:]:
            rec[f"score_{f}"] = None
        try:
            parsed = task.parse(g.text, mode=mode)
        except ParseError as e:
            rec["parse_error"] = f"{type(e).__name__}: {e}"
        else:
            rec.update(parsed.labels)
            rec["reasoning"] = parsed.reasoning
            probs = {}
            for k, f in enumerate(score_fields):
                p = field_value_probs(engine, task, f, g.text, g.token_ids, g.top_logprobs)
                if p is None:
                    continue
                probs[f] = {str(v): p[v] for v in p}
                s = sum(pv for v, pv in p.items() if v not in task.defect_values[f])
                rec["score" if k == 0 else f"score_{f}"] = s
            rec["label_probs"] = json.dumps(probs) if probs else None
        out.append(rec)
    return out


def _atomic_write_parquet(df: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.write_parquet(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_chunk(records: list[dict[str, Any]], task: Any, path: Path) -> None:
    """Write one finished chunk atomically (the unit of resumption)."""
    import polars as pl

    schema = predictions_schema(task)
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in records], schema=schema, orient="row")
    _atomic_write_parquet(df, path)


def _fingerprint(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def chunk_path(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.parquet"


def plan(cfg: LabelConfig) -> tuple[Any, list[dict[str, Any]], Path, list[int]]:
    """Read inputs, prepare ``<out>.parts`` and return (task, rows, parts dir, chunk indices still to do)."""
    from adnanny_cook.tasks import get_task

    from adnanny_serve.__about__ import __version__

    try:
        task = get_task(cfg.task)
    except Exception as e:
        raise ConfigError(f"`task` {cfg.task!r} is unknown: {e}") from e
    if task.kind != "label":
        raise ConfigError(f"`task` {cfg.task!r} is a generation task; `label` needs a labeling task "
                          "(query_ad, ad_user, pairwise_judgment).")
    rows = _read_inputs(Path(cfg.input), task)
    out = Path(cfg.out)
    parts = out.with_name(out.name + ".parts")
    state = {"input_fingerprint": _fingerprint(rows), "rows": len(rows), "task": cfg.task, "mode": cfg.mode,
             "chunk_size": cfg.chunk_size, "model": str(Path(cfg.model).resolve()), "example": cfg.example,
             "max_tokens": cfg.resolved_max_tokens, "version": __version__}
    state_file = parts / "state.json"
    if state_file.is_file():
        old = json.loads(state_file.read_text())
        diff = [k for k in ("input_fingerprint", "rows", "task", "mode", "chunk_size", "model", "example",
                            "max_tokens") if old.get(k) != state[k]]
        if diff:
            raise LabelError(
                f"`out` {str(out)!r} has an unfinished run in {str(parts)!r} with different {diff} "
                f"(was {[old.get(k) for k in diff]}, now {[state[k] for k in diff]}); rerun with the same "
                "settings to resume, or delete that folder to start over."
            )
    else:
        if out.exists():
            raise LabelError(f"`out` {str(out)!r} already exists; delete it or choose another path.")
        parts.mkdir(parents=True, exist_ok=True)
        tmp = state_file.with_name(".state.json.tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, state_file)
    n_chunks = (len(rows) + cfg.chunk_size - 1) // cfg.chunk_size
    todo = [k for k in range(n_chunks) if not chunk_path(parts, k).is_file()]
    return task, rows, parts, todo


def finalize(task: Any, rows: list[dict[str, Any]], parts: Path, out: Path, n_chunks: int) -> Any:
    """Assemble the chunks, check every id appears exactly once in input order, publish atomically."""
    import polars as pl

    frames = []
    for k in range(n_chunks):
        p = chunk_path(parts, k)
        if not p.is_file():
            raise LabelError(f"chunk file {str(p)!r} is missing; rerun the same command to finish it.")
        frames.append(pl.read_parquet(p))
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=predictions_schema(task))
    ids = df["id"].to_list()
    want = [r["id"] for r in rows]
    if ids != want:
        dup = df.filter(pl.col("id").is_duplicated())["id"].unique().to_list()[:3]
        raise LabelError(
            f"chunks in {str(parts)!r} do not hold each input id exactly once in order (duplicated e.g. {dup}, "
            f"{len(ids)} rows vs {len(want)} inputs); delete the folder and rerun."
        )
    _atomic_write_parquet(df, out)
    shutil.rmtree(parts)
    return df


def label_file(cfg: LabelConfig, engine: Any | None = None,
               on_chunk: Callable[[int], None] | None = None) -> LabelStats:
    """Run (or resume) a labeling job described by ``cfg``; ``engine`` is built from ``cfg`` when None.

    ``on_chunk(k)`` is called after chunk ``k`` is safely on disk (tests use it to kill a run midway).
    """
    t0 = time.perf_counter()
    task, rows, parts, todo = plan(cfg)
    n_chunks = (len(rows) + cfg.chunk_size - 1) // cfg.chunk_size
    done_rows = 0
    if cfg.executor == "ray":
        from adnanny_serve.ray_executor import run_chunks_on_ray

        done_rows = run_chunks_on_ray(cfg, rows, parts, todo)
    elif todo:
        from tqdm.auto import tqdm

        if engine is None:
            from adnanny_serve.engines import load_engine

            engine = load_engine(cfg.model, engine=cfg.engine, device=cfg.device, dtype=cfg.dtype,
                                 batch_size=cfg.batch_size)
        remaining = sum(len(rows[k * cfg.chunk_size:(k + 1) * cfg.chunk_size]) for k in todo)
        with tqdm(total=remaining, unit="sample", desc=f"label {cfg.task}/{cfg.mode}", disable=not cfg.progress,
                  dynamic_ncols=True) as bar:
            for k in todo:
                chunk = rows[k * cfg.chunk_size:(k + 1) * cfg.chunk_size]
                recs = label_rows(engine, task, chunk, mode=cfg.mode, max_tokens=cfg.resolved_max_tokens,
                                  top_logprobs=cfg.top_logprobs, example=cfg.example)
                write_chunk(recs, task, chunk_path(parts, k))
                done_rows += len(chunk)
                bar.update(len(chunk))
                bar.set_postfix(samples_per_s=f"{done_rows / max(time.perf_counter() - t0, 1e-9):.2f}")
                if on_chunk is not None:
                    on_chunk(k)
    df = finalize(task, rows, parts, Path(cfg.out), n_chunks)
    dt = time.perf_counter() - t0
    n = df.height
    return LabelStats(
        out=str(cfg.out), rows=n, rows_done_now=done_rows, chunks_skipped=n_chunks - len(todo),
        parse_errors=int(df["parse_error"].is_not_null().sum()), seconds=dt,
        samples_per_s=done_rows / dt if dt > 0 else 0.0,
        avg_prompt_tokens=float(df["prompt_tokens"].mean() or 0.0),
        avg_completion_tokens=float(df["completion_tokens"].mean() or 0.0),
        extra={"config": asdict(cfg)},
    )
