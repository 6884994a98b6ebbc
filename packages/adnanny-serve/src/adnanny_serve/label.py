"""Batch labeling: a CSV / JSONL / Parquet of inputs -> a predictions Parquet (the file adnanny-eval reads).

Contract of the output (one row per input row, in input order):
``id``, ``task``, ``mode``, one column per label field of the (selected) task (``label``, ``location_label``,
``quality_label`` for query_ad; the generated text fields for generation tasks: ``query``, ``profile``,
``title``/``description``, ``keywords``), ``score`` (P(non-defect) of the task's primary field — after the
threshold, if any, still the model's probability — see :mod:`adnanny_serve.scoring`), ``score_<field>`` for its
other defect-bearing fields, ``label_probs`` (JSON {field: {value: p}}), ``reasoning``, ``raw``,
``prompt_tokens``, ``completion_tokens``, ``finish_reason``, ``input_truncated`` and ``parse_error``. A row
whose output does not parse keeps null labels and scores and the parser's message in ``parse_error`` — never a
default label. ``<out>.manifest.json`` records what produced the file (model, task and its hash, few-shot
examples, truncation count, threshold and its source).

Inputs are read by adnanny-cook's streaming reader (``adnanny_cook.inputs.iter_rows``: CSV, JSONL, Parquet;
``columns`` renames file columns to task fields), in chunks: memory holds one chunk of rows (plus the set of
ids, to refuse duplicates), never the whole file.

Resumable without doing a row twice or losing one: the input is cut into fixed chunks of ``chunk_size`` rows
by position; each finished chunk is written atomically as ``<out>.parts/chunk-NNNNNN.parquet``. A restarted job
reads ``state.json`` (it must describe the same input rows, task, mode, prompts and chunking) and skips chunks
whose file exists. The final file is streamed together from the chunks, checked (every input id exactly once,
in input order) and renamed into place, and only then are the parts removed.

Threshold: a model exported by adnanny-sft carries ``adnanny_model.json`` with a decision threshold per task,
calibrated on its validation split. The primary field's label is then the most probable defect value when
``score < threshold`` and the most probable non-defect value otherwise (``threshold`` / ``no_threshold``
override it). WHY: a fine-tuned small model's greedy label sits on the 0.5 boundary of a skewed class prior; the
calibrated threshold is what makes its Model DR match the gold DR (paper §5.1).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_serve.errors import ConfigError, LabelError

if TYPE_CHECKING:  # pydantic(-settings) loads on first use: the GPU scripts call label_rows on bare boxes
    from adnanny_serve.config import LabelConfig

__all__ = ["LabelConfig", "LabelJob", "LabelStats", "label_file", "label_rows", "out_lock", "predictions_schema",
           "prompts_for", "resolve_task", "resolve_threshold"]

MODES = ("label", "reasoning")


def __getattr__(name: str) -> Any:
    if name == "LabelConfig":  # defined in adnanny_serve.config (the typed config); re-exported here
        from adnanny_serve.config import LabelConfig

        return LabelConfig
    raise AttributeError(f"module 'adnanny_serve.label' has no attribute {name!r}")
MODEL_MANIFEST = "adnanny_model.json"


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
    truncated_rows: int = 0
    manifest: str = ""
    threshold: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- task + threshold
def resolve_task(ref: str, model_dir: Path | None, labels: tuple[str, ...] | None = None) -> tuple[Any, str]:
    """(task spec, where it came from) for ``--task ref``.

    A TOML path loads that file; a name that the model dir stores (``tasks/<name>.toml``, written by adnanny-sft
    and cook: the exact definition the model was trained on) loads it from there; another name is a built-in or
    registered task. An empty ``ref`` takes the model dir's only stored task. ``labels`` then selects label
    fields (``("label",)``: relevance-only query_ad).
    """
    from adnanny_cook.tasks import load_task, load_task_from_dir

    stored = sorted(p.stem for p in (model_dir / "tasks").glob("*.toml")) if model_dir is not None and \
        (model_dir / "tasks").is_dir() else []
    try:
        if not ref:
            if len(stored) != 1:
                raise ConfigError(
                    f"`task` is required: the model dir {str(model_dir)!r} stores "
                    f"{'no task definitions' if not stored else f'several: {stored}'} under tasks/; pass "
                    "`--task NAME` or `--task FILE.toml`.")
            spec, source = load_task_from_dir(model_dir, stored[0]), f"{model_dir}/tasks/{stored[0]}.toml"
        elif ref.endswith(".toml") or os.sep in ref or Path(ref).is_file():
            spec, source = load_task(ref), str(Path(ref))
        elif ref in stored:
            spec, source = load_task_from_dir(model_dir, ref), f"{model_dir}/tasks/{ref}.toml"
        else:
            spec, source = load_task(ref), "built-in"
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"`task` {ref!r} cannot be loaded: {e}") from e
    if labels:
        try:
            spec = spec.select_labels(labels)
        except Exception as e:
            raise ConfigError(f"`labels` {list(labels)}: {e}") from e
    return spec, source


def _task_hash(task: Any) -> str | None:
    h = getattr(task, "hash", None)
    return h if isinstance(h, str) else None


def resolve_threshold(cfg: LabelConfig, task: Any, model_dir: Path) -> dict[str, Any]:
    """The decision threshold to apply and its source: ``{"value", "source", "field", "defect", ...}``.

    ``value`` None means "no threshold" (greedy labels). The model's ``adnanny_model.json`` is used only when it
    describes this task (same name, same primary field and defect values, same definition hash when recorded);
    otherwise the reason it was not used is recorded and printed.
    """
    from adnanny_serve.prompting import primary_field

    pf = primary_field(task)
    info: dict[str, Any] = {"value": None, "source": None, "field": pf,
                            "defect": list(task.defect_values.get(pf, ())) if pf else None}
    if cfg.no_threshold:
        info["source"] = "disabled (no_threshold)"
        return info
    if cfg.threshold is not None:
        if pf is None:
            raise ConfigError(f"`threshold` needs a task with a defect-bearing label field; task `{task.name}` has "
                              "none (generation tasks have no score).")
        info.update(value=float(cfg.threshold), source="threshold (flag/config)")
        return info
    mf = model_dir / MODEL_MANIFEST
    if not mf.is_file() or pf is None:
        return info
    try:
        data = json.loads(mf.read_text())
        entry = (data.get("tasks") or {}).get(task.name)
    except (ValueError, AttributeError) as e:
        raise LabelError(f"{str(mf)!r} is not valid JSON with a `tasks` table: {e}") from e
    if not isinstance(entry, Mapping) or entry.get("threshold") is None:
        return info
    why = None
    if entry.get("field", pf) != pf:
        why = f"it is for field {entry.get('field')!r}, this task's primary field is {pf!r}"
    elif entry.get("defect") is not None and sorted(map(str, entry["defect"])) != sorted(map(str, info["defect"])):
        why = f"its defect values {entry['defect']} differ from the task's {info['defect']}"
    elif entry.get("hash") and _task_hash(task) and entry["hash"] != _task_hash(task):
        why = (f"the model was calibrated on another definition of `{task.name}` (hash {entry['hash'][:12]} vs "
               f"{_task_hash(task)[:12]}); use the model's own task (omit `--task` or pass its name) or `--threshold`")
    t = entry["threshold"]
    if why is None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= float(t) <= 1.0):
        why = f"its threshold {t!r} is not a probability"
    if why is not None:
        info["source"] = f"not applied: {mf.name} {why}"
        print(f"adnanny-serve label: warning: threshold in {str(mf)!r} not applied: {why}.", file=sys.stderr)
        return info
    info.update(value=float(t), source=str(mf), method=entry.get("threshold_method"), val_bacc=entry.get("val_bacc"))
    return info


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
                   "completion_tokens": pl.Int64, "finish_reason": pl.Utf8, "input_truncated": pl.Boolean,
                   "parse_error": pl.Utf8})
    return schema


# ----------------------------------------------------------------------------------------- inputs
def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def iter_input_rows(path: Path, task: Any, columns: Mapping[str, str] | None, chunk_rows: int
                    ) -> Iterator[dict[str, Any]]:
    """Rows ``{"id", **inputs}`` of the input file, validated, streamed through cook's reader.

    A corpus-style ``input`` JSON column stands in for the input-field columns. Raises :class:`LabelError`
    naming the file and row for a missing/duplicate id, missing required inputs, or a row of another task.
    """
    from adnanny_cook.inputs import file_columns, iter_rows

    from adnanny_serve.prompting import _json_inputs

    if not path.is_file():
        raise LabelError(f"`input` file {str(path)!r} does not exist.")
    seen: set[str] = set()
    n = 0
    try:
        if columns:
            # one `--columns` serves the input and the few-shot file: a mapped label column (`label=esci`) that
            # an unlabeled input lacks is not needed here; a mapped input or id column must exist
            have = set(file_columns(path))
            columns = {f: c for f, c in columns.items() if c in have or f == "id" or f in task.input_fields}
        stream = iter_rows(path, columns=dict(columns) if columns else None, chunk_rows=chunk_rows)
        for item in stream:
            for rec in ([item] if isinstance(item, Mapping) else item):
                if n == 0:
                    cols = list(rec)
                    if "id" not in rec:
                        raise LabelError(f"`input` {str(path)!r} has no `id` column; columns are {cols}. Map "
                                         "one with `--columns id=COLUMN`.")
                    have = [f for f in task.input_fields if f in rec]
                    required = [f for f in getattr(task, "required_inputs", task.input_fields)]
                    if any(f not in rec for f in required) and "input" not in rec:
                        missing = [f for f in task.input_fields if f not in rec]
                        raise LabelError(
                            f"`input` {str(path)!r} lacks the input columns {missing} of task `{task.name}` and has "
                            f"no `input` JSON column (columns: {cols}, found {have}); map them with `--columns "
                            f"{missing[0]}=COLUMN,...` or give a corpus-style `input` column.")
                rid = rec.get("id")
                if _blank(rid):
                    raise LabelError(f"`input` {str(path)!r} row {n} has an empty `id`; every row needs a unique id.")
                rid = str(rid)
                if rid in seen:
                    raise LabelError(f"`input` {str(path)!r} row {n}: `id` {rid!r} appears twice; ids must be unique.")
                seen.add(rid)
                t = rec.get("task")
                if t is not None and t != task.name and "task" not in task.input_fields:
                    raise LabelError(f"`input` {str(path)!r} row {n} (id {rid!r}) has task {t!r}, not "
                                     f"`{task.name}`; filter the file to one task (`--task` must match).")
                if all(f in rec for f in getattr(task, "required_inputs", task.input_fields)):
                    inp = {f: rec.get(f) for f in task.input_fields}
                else:
                    full = _json_inputs(rec, n, str(path))
                    inp = {f: full.get(f) for f in task.input_fields}
                inp = {f: (None if _blank(v) else v) for f, v in inp.items()}
                missing = task.missing_inputs(inp)
                if missing:
                    raise LabelError(f"`input` {str(path)!r} row {n} (id {rid!r}) misses input fields {missing} of "
                                     f"task `{task.name}`.")
                n += 1
                yield {"id": rid, **inp}
    except (LabelError, ConfigError):
        raise
    except Exception as e:  # cook's reader: unreadable file, unknown mapped column — its message names them
        raise LabelError(f"`input` {str(path)!r}: {e}") from e


def iter_chunks(path: Path, task: Any, columns: Mapping[str, str] | None, chunk_size: int
                ) -> Iterator[list[dict[str, Any]]]:
    """Exactly ``chunk_size`` rows per chunk (the last may be shorter): the unit of resumption is positional."""
    buf: list[dict[str, Any]] = []
    for r in iter_input_rows(path, task, columns, chunk_size):
        buf.append(r)
        if len(buf) == chunk_size:
            yield buf
            buf = []
    if buf:
        yield buf


def prompts_for(engine: Any, task: Any, rows: list[dict[str, Any]], mode: str, example: bool) -> list[str]:
    """Rendered prompts (task messages through the engine's chat template; no few-shot, no truncation)."""
    return [engine.apply_chat_template(task.render_messages(r, mode=mode, example=example)) for r in rows]


# ----------------------------------------------------------------------------------------- labeling
def _apply_threshold(rec: dict[str, Any], probs: Mapping[str, Any], field_name: str, defect: tuple[Any, ...],
                     threshold: float) -> None:
    """Primary-field label from the score and the threshold: the most probable defect value when
    ``score < threshold``, else the most probable non-defect value."""
    if rec.get("score") is None or field_name not in probs:
        return
    p = probs[field_name]
    side = [v for v in p if (v in defect) == (rec["score"] < threshold)]
    if side:
        best = max(side, key=lambda v: p[v])
        rec[field_name] = best


def label_rows(engine: Any, task: Any, rows: list[dict[str, Any]], *, mode: str, max_tokens: int,
               top_logprobs: int = 20, example: bool = False, builder: Any = None,
               threshold: float | None = None) -> list[dict[str, Any]]:
    """Label ``rows`` with one batched ``engine.generate`` call; returns prediction records.

    ``builder`` (a :class:`adnanny_serve.prompting.PromptBuilder`) renders few-shot / truncated prompts;
    ``threshold`` decides the primary field's label from its score (see the module docstring).
    """
    from adnanny_cook.tasks import ParseError

    from adnanny_serve.engines.base import SamplingParams
    from adnanny_serve.engines.jump_forward import TagSkeleton
    from adnanny_serve.prompting import PromptBuilder, primary_field
    from adnanny_serve.scoring import field_value_probs

    if mode not in MODES:
        raise ConfigError(f"`mode` must be one of {list(MODES)}; got {mode!r}.")
    if builder is None:
        builder = PromptBuilder(engine, task, mode=mode, example=example)
    rendered = [builder.render(r) for r in rows]
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0,
        stop=tuple(task.label_stop) if mode == "label" else (),
        include_stop_str_in_output=True, logprobs=top_logprobs if task.kind == "label" else None,
        skeleton=TagSkeleton.from_task(task, mode),  # jump-forward over the fixed tags; outputs unchanged
    )
    gens = engine.generate([p for p, _ in rendered], params)
    score_fields = _score_fields(task)
    pf = primary_field(task)
    out = []
    for row, (prompt, truncated), g in zip(rows, rendered, gens):
        answer = builder.answer_prefix(prompt) + g.text  # a template's pre-opened <think> counts for the parser
        rec: dict[str, Any] = {"id": row["id"], "task": task.name, "mode": mode, "raw": answer,
                               "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                               "finish_reason": g.finish_reason, "reasoning": None, "parse_error": None,
                               "score": None, "label_probs": None, "input_truncated": truncated}
        for f in task.label_fields:
            rec[f] = None
        for f in score_fields[1:]:
            rec[f"score_{f}"] = None
        try:
            # generation tasks answer one output per row in the tag format they were trained on; the strict
            # parser keeps free text as written (stripped) and flags anything else — never coerced
            parsed = task.parse(answer, mode=mode)
        except ParseError as e:
            rec["parse_error"] = f"{type(e).__name__}: {e}"
        else:
            rec.update(parsed.labels)
            rec["reasoning"] = parsed.reasoning
            probs: dict[str, dict[Any, float]] = {}
            for k, f in enumerate(score_fields):
                p = field_value_probs(engine, task, f, g.text, g.token_ids, g.top_logprobs)
                if p is None:
                    continue
                probs[f] = p
                s = sum(pv for v, pv in p.items() if v not in task.defect_values[f])
                rec["score" if k == 0 else f"score_{f}"] = s
            if threshold is not None and pf is not None:
                _apply_threshold(rec, probs, pf, tuple(task.defect_values[pf]), threshold)
            rec["label_probs"] = (json.dumps({f: {str(v): pv for v, pv in p.items()} for f, p in probs.items()})
                                  if probs else None)
        out.append(rec)
    return out


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_publish(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_write_parquet(df: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    df.write_parquet(tmp)
    _fsync_publish(tmp, path)


def _atomic_write_json(data: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    _fsync_publish(tmp, path)


def write_chunk(records: list[dict[str, Any]], task: Any, path: Path) -> None:
    """Write one finished chunk atomically (the unit of resumption)."""
    import polars as pl

    schema = predictions_schema(task)
    df = pl.DataFrame([{k: r.get(k) for k in schema} for r in records], schema=schema, orient="row")
    _atomic_write_parquet(df, path)


def chunk_path(parts: Path, k: int) -> Path:
    return parts / f"chunk-{k:06d}.parquet"


# ----------------------------------------------------------------------------------------- the job
@dataclass
class LabelJob:
    """Everything a worker needs to label chunks (picklable: Ray actors get one)."""

    cfg: LabelConfig
    model_dir: Path
    task: Any
    task_source: str
    threshold: dict[str, Any]
    few_shot: Any  # adnanny_serve.prompting.FewShot | None
    rows: int
    ids_sha256: str
    input_fingerprint: str
    parts: Path
    new_state: dict[str, Any] | None = None  # set by plan() for a fresh run; start() writes it

    @property
    def n_chunks(self) -> int:
        return (self.rows + self.cfg.chunk_size - 1) // self.cfg.chunk_size

    def builder(self, engine: Any) -> Any:
        from adnanny_serve.prompting import PromptBuilder

        return PromptBuilder(engine, self.task, mode=self.cfg.mode, example=self.cfg.example,
                             few_shot=self.few_shot, max_input_tokens=self.cfg.max_input_tokens)

    def label_chunk(self, engine: Any, builder: Any, k: int, chunk: list[dict[str, Any]]) -> None:
        recs = label_rows(engine, self.task, chunk, mode=self.cfg.mode, max_tokens=self.cfg.max_tokens_for(self.task),
                          top_logprobs=self.cfg.top_logprobs, example=self.cfg.example, builder=builder,
                          threshold=self.threshold.get("value"))
        write_chunk(recs, self.task, chunk_path(self.parts, k))

    def chunks(self) -> Iterator[list[dict[str, Any]]]:
        return iter_chunks(Path(self.cfg.input), self.task, self.cfg.columns, self.cfg.chunk_size)

    def load_engine(self) -> Any:
        from adnanny_serve.engines import load_engine

        return load_engine(str(self.model_dir), engine=self.cfg.engine, device=self.cfg.device, dtype=self.cfg.dtype,
                           batch_size=self.cfg.batch_size, allow_pickle=self.cfg.allow_pickle,
                           fp8_weights=self.cfg.fp8_weights)


_STATE_KEYS = ("input_fingerprint", "rows", "task", "task_hash", "mode", "chunk_size", "model", "example",
               "max_tokens", "max_input_tokens", "few_shot", "threshold", "labels", "columns")


def plan(cfg: LabelConfig) -> LabelJob:
    """Resolve model and task, scan the input once (validating it), prepare ``<out>.parts`` -> a :class:`LabelJob`."""
    from adnanny_ckpt.models import resolve_model

    from adnanny_serve.__about__ import __version__
    from adnanny_serve.prompting import read_few_shot

    cfg.check_runnable()
    try:
        model_dir = resolve_model(cfg.model)
    except Exception as e:
        raise ConfigError(str(e)) from e
    task, task_source = resolve_task(cfg.task, model_dir, cfg.labels)
    threshold = resolve_threshold(cfg, task, model_dir)
    few = None
    if cfg.few_shot:
        few = read_few_shot(task, cfg.few_shot_from, k=cfg.few_shot, seed=cfg.few_shot_seed, columns=cfg.columns,
                            chunk_rows=max(cfg.chunk_size, 1024), need_reasoning=cfg.mode == "reasoning")
    # one streaming pass: validates every row up front (a bad row 1M rows in should fail before labeling) and
    # fingerprints the rows as the task sees them, so a changed file or column mapping is refused on resume
    fp, ids = hashlib.sha256(), hashlib.sha256()
    rows = 0
    for chunk in iter_chunks(Path(cfg.input), task, cfg.columns, cfg.chunk_size):
        for r in chunk:
            fp.update(json.dumps(r, sort_keys=True, default=str).encode())
            fp.update(b"\n")
            ids.update(r["id"].encode())
            ids.update(b"\n")
        rows += len(chunk)
    out = Path(cfg.out)
    parts = out.with_name(out.name + ".parts")
    job = LabelJob(cfg=cfg, model_dir=model_dir, task=task, task_source=task_source, threshold=threshold,
                   few_shot=few, rows=rows, ids_sha256=ids.hexdigest(), input_fingerprint=fp.hexdigest(),
                   parts=parts)
    state = {"input_fingerprint": job.input_fingerprint, "rows": rows, "task": task.name, "task_hash": _task_hash(task),
             "mode": cfg.mode, "chunk_size": cfg.chunk_size, "model": str(model_dir.resolve()),
             "example": cfg.example, "max_tokens": cfg.max_tokens_for(task), "max_input_tokens": cfg.max_input_tokens,
             "few_shot": few.summary()["ids"] if few is not None else None, "threshold": threshold["value"],
             "labels": list(task.field_order), "columns": cfg.columns, "version": __version__}
    state_file = parts / "state.json"
    if state_file.is_file():
        old = json.loads(state_file.read_text())
        diff = [k for k in _STATE_KEYS if old.get(k) != state[k]]
        if diff:
            raise LabelError(
                f"`out` {str(out)!r} has an unfinished run in {str(parts)!r} with different {diff} "
                f"(was {[old.get(k) for k in diff]}, now {[state[k] for k in diff]}); rerun with the same "
                "settings to resume, or delete that folder to start over."
            )
    else:
        if out.exists():
            raise LabelError(f"`out` {str(out)!r} already exists; delete it or choose another path.")
        job.new_state = state  # written by start() once the engine is up: a run that never starts leaves nothing
    return job


def start(job: LabelJob) -> None:
    """Create ``<out>.parts/state.json`` for a fresh run (no-op when resuming)."""
    if job.new_state is not None:
        job.parts.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(job.new_state, job.parts / "state.json")
        job.new_state = None


def out_lock(out: Path) -> Any:
    """The exclusive lock of one ``--out``: adnanny-cook's :class:`~adnanny_cook.lock.FolderLock` on the lock file
    ``.<name>.lock`` next to ``out`` (not on the whole folder, so two runs writing different files of one folder
    do not exclude each other; not inside ``<out>.parts``, which comes and goes). The file stays after the run
    (empty): deleting a flock'ed file would let a third process lock a fresh inode while the second holds the
    old one."""
    from adnanny_cook.lock import FolderLock

    lock = FolderLock(out.parent, "adnanny-serve label " + str(out))
    lock.path = out.parent / f".{out.name}.lock"
    return lock


def _todo(job: LabelJob) -> list[int]:
    return [k for k in range(job.n_chunks) if not chunk_path(job.parts, k).is_file()]


def finalize(job: LabelJob, out: Path) -> dict[str, Any]:
    """Stream the chunks into ``out`` after checking every id appears exactly once in input order; write the
    manifest; publish atomically. Returns the manifest."""
    import polars as pl

    paths = [chunk_path(job.parts, k) for k in range(job.n_chunks)]
    for p in paths:
        if not p.is_file():
            raise LabelError(f"chunk file {str(p)!r} is missing; rerun the same command to finish it.")
    h = hashlib.sha256()
    n = 0
    agg = {"parse_errors": 0, "truncated_rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
    schema = predictions_schema(job.task)
    for p in paths:
        df = pl.read_parquet(p, columns=["id", "parse_error", "input_truncated", "prompt_tokens",
                                         "completion_tokens"])
        for rid in df["id"].to_list():
            h.update(str(rid).encode())
            h.update(b"\n")
        n += df.height
        agg["parse_errors"] += int(df["parse_error"].is_not_null().sum())
        agg["truncated_rows"] += int(df["input_truncated"].fill_null(False).sum())
        agg["prompt_tokens"] += int(df["prompt_tokens"].fill_null(0).sum())
        agg["completion_tokens"] += int(df["completion_tokens"].fill_null(0).sum())
    if n != job.rows or h.hexdigest() != job.ids_sha256:
        raise LabelError(
            f"chunks in {str(job.parts)!r} do not hold each input id exactly once in input order ({n} rows vs "
            f"{job.rows} inputs); delete the folder and rerun.")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if paths:
        pl.concat([pl.scan_parquet(p) for p in paths], how="vertical").sink_parquet(tmp)
    else:
        pl.DataFrame(schema=schema).write_parquet(tmp)
    cfg = job.cfg
    from adnanny_serve.__about__ import __version__

    manifest = {
        "predictions": out.name, "rows": n, "parse_errors": agg["parse_errors"],
        "truncated_rows": agg["truncated_rows"], "max_input_tokens": cfg.max_input_tokens,
        "avg_prompt_tokens": agg["prompt_tokens"] / n if n else 0.0,
        "avg_completion_tokens": agg["completion_tokens"] / n if n else 0.0,
        "model": cfg.model, "model_dir": str(job.model_dir.resolve()),
        "task": job.task.name, "task_hash": _task_hash(job.task), "task_source": job.task_source,
        "label_fields": list(job.task.field_order), "mode": cfg.mode,
        "input": str(cfg.input), "columns": cfg.columns, "input_fingerprint": job.input_fingerprint,
        "threshold": job.threshold,
        "few_shot": job.few_shot.summary() if job.few_shot is not None else None,
        "example": cfg.example, "max_tokens": cfg.max_tokens_for(job.task), "adnanny_serve": __version__,
    }
    _atomic_write_json(manifest, out.with_name(out.name + ".manifest.json"))
    _fsync_publish(tmp, out)
    shutil.rmtree(job.parts)
    return manifest


def label_file(cfg: LabelConfig, engine: Any | None = None,
               on_chunk: Callable[[int], None] | None = None) -> LabelStats:
    """Run (or resume) a labeling job described by ``cfg``; ``engine`` is built from ``cfg`` when None.

    ``on_chunk(k)`` is called after chunk ``k`` is safely on disk (tests use it to kill a run midway).
    """
    from adnanny_cook.lock import FolderLockedError

    cfg.check_runnable()
    out = Path(cfg.out)
    lock = out_lock(out)
    try:
        lock.acquire()
    except FolderLockedError as e:
        raise LabelError(f"`out` {str(out)!r} is being written by another label run: {e}") from None
    try:
        return _label_locked(cfg, engine, on_chunk)
    finally:
        lock.release()


def _label_locked(cfg: LabelConfig, engine: Any | None, on_chunk: Callable[[int], None] | None) -> LabelStats:
    t0 = time.perf_counter()
    job = plan(cfg)
    todo = _todo(job)
    done_rows = 0
    if cfg.executor == "ray":
        from adnanny_ckpt.errors import AdNannyCkptError
        from adnanny_ckpt.models import check_model_dir

        from adnanny_serve.errors import EngineError
        from adnanny_serve.ray_executor import run_chunks_on_ray

        try:  # the actors load the engine; refuse a bad model folder before any state is written
            check_model_dir(job.model_dir, allow_pickle=cfg.allow_pickle)
        except AdNannyCkptError as e:
            raise EngineError(str(e)) from None
        start(job)
        done_rows = run_chunks_on_ray(job, todo)
    elif todo:
        from tqdm.auto import tqdm

        if engine is None:
            engine = job.load_engine()
        start(job)
        builder = job.builder(engine)
        pending = set(todo)
        remaining = sum(min(cfg.chunk_size, job.rows - k * cfg.chunk_size) for k in todo)
        with tqdm(total=remaining, unit="sample", desc=f"label {job.task.name}/{cfg.mode}",
                  disable=not cfg.progress, dynamic_ncols=True) as bar:
            for k, chunk in enumerate(job.chunks()):
                if k not in pending:
                    continue  # finished by an earlier run: read past it, never redo it
                job.label_chunk(engine, builder, k, chunk)
                done_rows += len(chunk)
                bar.update(len(chunk))
                bar.set_postfix(samples_per_s=f"{done_rows / max(time.perf_counter() - t0, 1e-9):.2f}")
                if on_chunk is not None:
                    on_chunk(k)
    start(job)  # an empty input: nothing to label, the (empty) file is still written through the parts folder
    man = finalize(job, Path(cfg.out))
    dt = time.perf_counter() - t0
    return LabelStats(
        out=str(cfg.out), rows=man["rows"], rows_done_now=done_rows, chunks_skipped=job.n_chunks - len(todo),
        parse_errors=man["parse_errors"], seconds=dt, samples_per_s=done_rows / dt if dt > 0 else 0.0,
        avg_prompt_tokens=man["avg_prompt_tokens"], avg_completion_tokens=man["avg_completion_tokens"],
        truncated_rows=man["truncated_rows"], manifest=str(Path(cfg.out).with_name(Path(cfg.out).name +
                                                                                     ".manifest.json")),
        threshold=job.threshold["value"], extra={"config": cfg.model_dump(), "manifest": man},
    )
