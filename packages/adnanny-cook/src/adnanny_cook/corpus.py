"""The corpus schema every training stage reads (design.md: "cook owns the corpus schema").

One row = one training example: the prompt `messages` (system + user, NO assistant turn), the assistant `target`
text, and the structured `labels` / `reasoning` it was made from. JSON-string columns (`labels`, `provenance`,
`input`) keep the schema identical across tasks whose fields differ.

`read_corpus` validates rather than trusts: every row's target must parse back (with the task's strict parser)
to the row's `labels`, so a corpus that would teach a model a wrong label is refused with the row named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adnanny_cook.errors import AdNannyCookError, CorpusSchemaError, ParseError, UnknownTaskError
from adnanny_cook.tasks import TaskSpec, get_task, load_task

__all__ = ["CORPUS_COLUMNS", "CORPUS_FILE", "atomic_write_bytes", "corpus_tasks", "make_row", "read_corpus",
           "read_corpus_tasks", "validate_corpus", "write_corpus"]

#: Column order of a corpus Parquet file.
CORPUS_COLUMNS: tuple[str, ...] = ("id", "task", "mode", "messages", "target", "labels", "reasoning", "split",
                                   "provenance", "input")
CORPUS_FILE = "corpus.parquet"
_MODES = ("reasoning", "label")
_SPLITS = ("train", "eval")


def make_row(*, id: str, task: str | TaskSpec, mode: str, input: Mapping[str, Any], labels: Mapping[str, Any],
             reasoning: str | None, split: str, provenance: Mapping[str, Any] | None = None,
             example: bool = False) -> dict[str, Any]:
    """Build one corpus row from a task input and its labels (+ reasoning in reasoning mode).

    `task` is a registered name, a task file path or a `TaskSpec` (a user's task, or one restricted with
    `select_labels`). The labels must hold every required label field; optional ones may be absent, and the
    row is then rendered with the task restricted to the labels it has (relevance-only `query_ad`: the prompt
    asks for `<Label>` alone and the target is `<Label>...</Label>`). Blank optional inputs are left out of the
    prompt.
    """
    spec = load_task(task)
    if mode not in _MODES:
        raise CorpusSchemaError(f"`mode` must be one of {_MODES}, got {mode!r}")
    canon = spec.validate_labels(labels)
    view = _selected(spec, tuple(canon))
    r = reasoning if mode == "reasoning" else None
    if mode == "reasoning" and not (reasoning and reasoning.strip()):
        raise CorpusSchemaError(f"row `{id}`: mode 'reasoning' needs a non-empty `reasoning`")
    inp = {f: ("" if input.get(f) is None else input[f]) for f in spec.input_fields}
    return {
        "id": str(id),
        "task": spec.name,
        "mode": mode,
        "messages": view.render_messages(inp, mode, example=example),
        "target": view.format_target(canon, r),
        "labels": json.dumps(canon, sort_keys=True),
        "reasoning": r.strip() if r else None,
        "split": split,
        "provenance": json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        "input": json.dumps(inp, sort_keys=True, ensure_ascii=False),
    }


_SELECTED: dict[tuple[str, tuple[str, ...]], TaskSpec] = {}


def _selected(spec: TaskSpec, fields: tuple[str, ...]) -> TaskSpec:
    """`spec.select_labels(fields)`, memoized per definition (validating a corpus asks once per row)."""
    if len(fields) == len(spec.label_fields):
        return spec
    key = (spec.hash, fields)
    got = _SELECTED.get(key)
    if got is None:
        got = _SELECTED[key] = spec.select_labels(fields)
    return got


def corpus_tasks(rows: Iterable[Mapping[str, Any]], tasks: Iterable[TaskSpec] | Mapping[str, TaskSpec] | None = None
                 ) -> dict[str, TaskSpec]:
    """The task definitions a set of corpus rows was built with, by name.

    A task given in `tasks` is used as it is; any other task named by the rows is the registered one restricted
    to the label fields its rows carry (a relevance-only `query_ad` corpus records a `query_ad` with `label`
    alone, so its `hash` tells it apart from the three-label task).
    """
    given = dict(tasks) if isinstance(tasks, Mapping) else {t.name: t for t in (tasks or ())}
    seen: dict[str, set[str]] = {}
    for r in rows:
        labels = json.loads(r["labels"]) if isinstance(r["labels"], str) else r["labels"]
        seen.setdefault(r["task"], set()).update(labels)
    out: dict[str, TaskSpec] = {}
    for name in sorted(seen):
        if name in given:
            out[name] = given[name]
            continue
        try:
            spec = get_task(name)
        except UnknownTaskError:
            continue  # validate_corpus names the row and the unknown task
        out[name] = spec.select_labels(tuple(f for f in spec.label_fields if f in seen[name]))
    for name, spec in given.items():
        out.setdefault(name, spec)
    return out


def read_corpus_tasks(path: str | os.PathLike[str]) -> dict[str, TaskSpec]:
    """The `tasks/<name>.toml` definitions next to a corpus (a directory, or a Parquet file's folder)."""
    from adnanny_cook.tasks.registry import TASKS_DIR
    from adnanny_cook.tasks.schema import load_task_file

    p = Path(path)
    d = (p if p.is_dir() else p.parent) / TASKS_DIR
    return {s.name: s for s in (load_task_file(f) for f in sorted(d.glob("*.toml")))} if d.is_dir() else {}


def _frame(rows: list[dict[str, Any]]):
    import polars as pl

    schema = {
        "id": pl.String, "task": pl.String, "mode": pl.String,
        "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "target": pl.String, "labels": pl.String, "reasoning": pl.String, "split": pl.String,
        "provenance": pl.String, "input": pl.String,
    }
    return pl.DataFrame([{c: r.get(c) for c in CORPUS_COLUMNS} for r in rows], schema=schema, orient="row")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a file via temp name + fsync + rename (+ directory fsync), so a crash never leaves a half-written
    file behind and a finished rename survives power loss.

    The temp file is opened with mode 0o644 so the kernel applies the process umask (what a plain `open` would
    give); `tempfile.mkstemp` would leave corpora readable by their owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_corpus(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], *, validate: bool = True,
                 tasks: Iterable[TaskSpec] | Mapping[str, TaskSpec] | None = None) -> Path:
    """Validate and write rows to a Parquet file (atomic). `path` may be a directory (-> `corpus.parquet`).

    The corpus folder also gets `tasks/<name>.toml` for every task in the rows: the definitions of `tasks`
    where given, else the registered task restricted to the label fields its rows carry (`corpus_tasks`), so a
    reader (`read_corpus`, sft, `load_task_from_dir`) renders and parses exactly as the corpus was built.
    """
    import io

    from adnanny_cook.tasks import save_task

    rows = [dict(r) for r in rows]
    specs = corpus_tasks(rows, tasks)
    df = _frame(rows)
    if validate:
        validate_corpus(df, source="rows", tasks=specs)
    path = Path(path)
    if path.suffix != ".parquet":
        path = path / CORPUS_FILE
    for spec in specs.values():
        save_task(spec, path.parent)
    buf = io.BytesIO()
    df.write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_corpus(path: str | os.PathLike[str], *, validate: bool = True):
    """Read a corpus (a Parquet file, or a directory holding `corpus.parquet` or `*.parquet` parts) as a polars
    DataFrame, validating the schema and every row (see `validate_corpus`)."""
    import polars as pl

    p = Path(path)
    if p.is_dir():
        files = [p / CORPUS_FILE] if (p / CORPUS_FILE).exists() else sorted(p.glob("*.parquet"))
        if not files:
            raise CorpusSchemaError(f"no Parquet file in corpus directory `{p}`; expected `{CORPUS_FILE}`")
    elif p.exists():
        files = [p]
    else:
        raise CorpusSchemaError(f"corpus path `{p}` does not exist")
    frames = []
    for f in files:
        try:
            frames.append(pl.read_parquet(f))
        except Exception as e:  # polars raises several types for a non-Parquet file
            raise CorpusSchemaError(f"cannot read corpus file `{f}` as Parquet: {e}") from e
    df = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
    if validate:
        try:
            tasks = read_corpus_tasks(p)
        except AdNannyCookError as e:
            raise CorpusSchemaError(f"corpus `{p}`: {e}") from e
        validate_corpus(df, source=str(p), tasks=tasks)
    return df


def validate_corpus(df, *, source: str = "corpus", tasks: Mapping[str, TaskSpec] | None = None) -> None:
    """Raise `CorpusSchemaError` naming the source, row id and column of the first problems found.

    Each row's task is looked up in `tasks` (the corpus's own `tasks/*.toml`), then in the registry. A row may
    lack optional label fields; its target must then parse with the task restricted to the labels it has.
    """
    missing = [c for c in CORPUS_COLUMNS if c not in df.columns]
    if missing:
        raise CorpusSchemaError(f"`{source}` misses corpus columns {missing}; required: {list(CORPUS_COLUMNS)}")
    problems: list[str] = []
    seen: set[str] = set()
    for i, row in enumerate(df.select(list(CORPUS_COLUMNS)).iter_rows(named=True)):
        rid = row["id"]
        where = f"row {i} (id={rid!r})"
        if not rid:
            problems.append(f"{where}: `id` is empty")
        elif rid in seen:
            problems.append(f"{where}: duplicate `id`")
        seen.add(rid)
        try:
            spec = (tasks or {}).get(row["task"]) or get_task(row["task"])
        except UnknownTaskError as e:
            problems.append(f"{where}: column `task`: {e}")
            continue
        if row["mode"] not in _MODES:
            problems.append(f"{where}: column `mode` is {row['mode']!r}, expected one of {_MODES}")
            continue
        if row["split"] not in _SPLITS:
            problems.append(f"{where}: column `split` is {row['split']!r}, expected one of {_SPLITS}")
        msgs = row["messages"]
        if not msgs or any(m.get("role") not in ("system", "user") for m in msgs):
            problems.append(f"{where}: column `messages` must be a non-empty prompt of system/user turns "
                            f"(no assistant turn)")
        try:
            labels = spec.validate_labels(json.loads(row["labels"]))
        except (ValueError, TypeError, ParseError) as e:
            problems.append(f"{where}: column `labels`: {e}")
            continue
        try:
            parsed = _selected(spec, tuple(labels)).parse(row["target"] or "", mode=row["mode"])
        except ParseError as e:
            problems.append(f"{where}: column `target` does not parse: {e}")
            continue
        if parsed.labels != labels:
            problems.append(f"{where}: column `target` says {parsed.labels} but `labels` says {labels}")
        if row["mode"] == "reasoning" and not (row["reasoning"] or "").strip():
            problems.append(f"{where}: column `reasoning` is empty in reasoning mode")
        for col in ("provenance", "input"):
            try:
                json.loads(row[col] or "")
            except ValueError:
                problems.append(f"{where}: column `{col}` is not a JSON string")
        if len(problems) >= 20:
            break
    if problems:
        more = " (first 20 shown)" if len(problems) >= 20 else ""
        raise CorpusSchemaError(f"`{source}` breaks the corpus schema{more}:\n  " + "\n  ".join(problems))
