"""The task registry: the eight built-in tasks of the paper (§2) plus any a user registers, all defined as data.

Built-in tasks are TOML task files shipped in `adnanny_cook/tasks/builtin/` and loaded by the same loader as a
user's own file (`load_task("my_task.toml")`), so prompts, labels, tags, defect values and split keys live in
one place per task. Labeling tasks (closed label sets): `query_ad`, `ad_user`, `pairwise_judgment`. Generation
tasks (free-text outputs): `keyword_query`, `user_query`, `user_profile`, `ad_rewrite`, `keyword_extension`.

Reasoning prompts follow §3.2: they show the existing label and ask, in explicit steps, for the intent, what the
ad offers, and why the given labels fit. Each task carries variants (rephrased question, reordered steps, an
in-prompt example) used by golden-set validation (§3.3) and rejection sampling (§3.4).

A corpus folder (and a model folder exported from one) carries `tasks/<name>.toml`, the exact definitions it was
built with (possibly restricted with `select_labels`); `load_task_from_dir` reads them back.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from adnanny_cook.errors import ConfigError, UnknownTaskError
from adnanny_cook.tasks.schema import load_task_file, spec_from_dict, task_to_toml
from adnanny_cook.tasks.spec import CONTROL_TAGS, TaskSpec

__all__ = ["KEYWORD_RULES", "TASK_NAMES", "all_tasks", "get_task", "load_task", "load_task_from_dir",
           "register_task", "save_task", "task_names"]

#: Order of the built-in tasks (the paper's §2 list); each is `builtin/<name>.toml`.
_BUILTIN_ORDER = ("query_ad", "ad_user", "keyword_query", "user_query", "user_profile", "ad_rewrite",
                  "keyword_extension", "pairwise_judgment")
#: Folder, inside a corpus or model folder, that holds the task definitions it was built with.
TASKS_DIR = "tasks"


def _load_builtin(name: str) -> TaskSpec:
    import tomllib

    f = resources.files("adnanny_cook.tasks").joinpath("builtin", f"{name}.toml")
    spec = spec_from_dict(tomllib.loads(f.read_text(encoding="utf-8")),
                          source=f"adnanny_cook/tasks/builtin/{name}.toml")
    if spec.name != name:
        raise ConfigError(f"built-in task file `{name}.toml` defines `name` = {spec.name!r}")
    return spec


_REGISTRY: dict[str, TaskSpec] = {n: _load_builtin(n) for n in _BUILTIN_ORDER}

#: Names of the built-in tasks (registered user tasks: `task_names()`).
TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: The §3.2 keyword-query rules (the `keyword_query` task's generation rules).
KEYWORD_RULES: tuple[str, ...] = _REGISTRY["keyword_query"].generation_rules

for _t in _REGISTRY.values():
    CONTROL_TAGS.update(_t.tags.values())


def _known() -> str:
    return f"known tasks: {list(_REGISTRY)}"


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` registered under `name`; unknown names raise `UnknownTaskError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task `name`={name!r}; {_known()}") from None


def task_names() -> tuple[str, ...]:
    """Every registered task name: the built-ins, then user tasks in registration order."""
    return tuple(_REGISTRY)


def all_tasks() -> list[TaskSpec]:
    return list(_REGISTRY.values())


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".toml") or os.sep in ref or "/" in ref


def load_task(ref: str | os.PathLike[str] | TaskSpec) -> TaskSpec:
    """A task by registered name ("query_ad") or by path to a TOML task file ("tasks/esci.toml").

    Loading a file does not register it (see `register_task`), but its tags join `CONTROL_TAGS` so inputs are
    defanged against them. A `TaskSpec` passes through.
    """
    if isinstance(ref, TaskSpec):
        return ref
    if isinstance(ref, os.PathLike) or (isinstance(ref, str) and _looks_like_path(ref)):
        spec = load_task_file(ref)
        CONTROL_TAGS.update(spec.tags.values())
        return spec
    if isinstance(ref, str) and ref in _REGISTRY:
        return _REGISTRY[ref]
    raise UnknownTaskError(f"unknown task {ref!r}: not a registered name and not a path to a .toml task file; "
                           f"{_known()}")


def register_task(spec_or_path: TaskSpec | str | os.PathLike[str], *, replace: bool = False) -> TaskSpec:
    """Register a task (a `TaskSpec` or a TOML task file) under its `name`, so `get_task(name)` finds it.

    Registering the same definition twice is a no-op; a different definition under a taken name is refused
    unless `replace=True` (so a user file cannot silently change a built-in task's prompts).
    """
    spec = spec_or_path if isinstance(spec_or_path, TaskSpec) else load_task_file(spec_or_path)
    old = _REGISTRY.get(spec.name)
    if old is not None and old.hash != spec.hash and not replace:
        raise ConfigError(f"task `{spec.name}` is already registered with a different definition (sha256 "
                          f"{old.hash[:12]} vs {spec.hash[:12]}); pass replace=True or choose another `name`")
    _REGISTRY[spec.name] = spec
    CONTROL_TAGS.update(spec.tags.values())
    return spec


def save_task(spec: TaskSpec, folder: str | os.PathLike[str]) -> Path:
    """Write `spec` as `<folder>/tasks/<name>.toml` (atomic); returns the file's path."""
    from adnanny_cook.corpus import atomic_write_bytes

    path = Path(folder) / TASKS_DIR / f"{spec.name}.toml"
    atomic_write_bytes(path, task_to_toml(spec).encode("utf-8"))
    return path


def load_task_from_dir(folder: str | os.PathLike[str], name: str) -> TaskSpec:
    """The definition of task `name` that a corpus or model folder was built with (`<folder>/tasks/<name>.toml`).

    A folder without a `tasks/` directory (written before task files existed) falls back to the registered
    task of that name; a `tasks/` directory without the file is an error naming the path.
    """
    d = Path(folder)
    f = d / TASKS_DIR / f"{name}.toml"
    if f.is_file():
        spec = load_task_file(f)
        if spec.name != name:
            raise UnknownTaskError(f"task file `{f}` defines task {spec.name!r}, not {name!r}")
        CONTROL_TAGS.update(spec.tags.values())
        return spec
    if not (d / TASKS_DIR).is_dir() and name in _REGISTRY:
        return _REGISTRY[name]
    have = sorted(p.stem for p in (d / TASKS_DIR).glob("*.toml")) if (d / TASKS_DIR).is_dir() else []
    raise UnknownTaskError(f"no task definition `{f}` for task {name!r}; the folder has task files {have}")
