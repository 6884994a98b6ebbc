"""The flow config: a few top-level keys plus one table per stage, whose type is that stage's own `Config`.

One config mechanism (adnanny-cook's `adnanny_cook.settings`, pydantic-settings): a TOML file, then flags of the
same names (`--seed 3`, `--train.steps 40`, `--tasks query_ad,ad_user`), then overrides — validated as a whole, with
every unknown key reported by its dotted name and the closest known key (`unknown key `train.stpes` (did you mean
`steps`?)`). Why the model is built at run time (`flow_model`): the stage tables belong to the stages
(`adnanny.stages.*`), so the flow knows their types only once they are imported; the engine's own tests build it
from toy stages the same way.

Top-level keys (`FlowBase`):
- `run_dir`: the run directory (`--out` on the command line).
- `seed`: the one seed every stage derives its own from.
- `tasks`: built-in task names (`query_ad`) or paths to the user's own task TOML files.
- `data`: per task, the user's own labeled rows (`path` to CSV/JSONL/Parquet + a `columns` map task field -> column)
  instead of the built-in sample world.
- `stages`: which stages to run (default: every installed stage, in flow order).

Relative paths (`tasks`, `data.*.path`) are resolved against the config file's folder, so a config and its data
travel together.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from adnanny_cook.settings import Settings, load_settings, split_commas

__all__ = ["FlowBase", "FlowConfigError", "InputData", "flow_model", "installed_stages", "load_flow_config",
           "resolve_paths", "DEFAULT_CONFIG", "CI_CONFIG", "LEARN_CONFIG"]

#: The embedded default (`adnanny run` with no `--config`) and the small CI config, as package data.
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"
CI_CONFIG = Path(__file__).parent / "configs" / "ci.toml"
#: the smallest config whose model learns relevance (the default's world and recipe, CI-sized other stages)
LEARN_CONFIG = Path(__file__).parent / "configs" / "learn.toml"

DATA_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet", ".json")


class FlowConfigError(ValueError):
    """An invalid flow config; the one-line message names the file and every key at fault."""


def _columns(value: Any) -> Any:
    """`columns` as a table or as `field=column,field=column` (adnanny-cook's one `parse_columns`)."""
    if isinstance(value, str) or value is None:
        from adnanny_cook.errors import ConfigError
        from adnanny_cook.inputs import parse_columns

        try:
            return parse_columns(value)
        except ConfigError as e:
            raise ValueError(str(e).removeprefix("`columns`: ")) from None
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(split_commas)]
ColumnMap = Annotated[dict[str, str], NoDecode, BeforeValidator(_columns)]


class InputData(BaseModel):
    """The user's own labeled rows for one task, instead of the sample world."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a CSV, JSONL or Parquet file of inputs and gold labels")
    columns: ColumnMap = Field(default_factory=dict, description="task field -> column name in `path` "
                                                                 "(fields named like their column need no entry)")

    @field_validator("path")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if Path(v).suffix.lower() not in DATA_SUFFIXES:
            raise ValueError(f"must be a {'/'.join(DATA_SUFFIXES)} file, got {v!r}")
        return v


class FlowBase(Settings):
    """The flow's own keys; `flow_model` adds one table per stage."""

    model_config = SettingsConfigDict(cli_prog_name="adnanny run")

    run_dir: str = Field("adnanny-run", description="the run directory: one folder per stage, manifests, report")
    seed: int = Field(0, description="the flow's seed (each stage derives its own from it)")
    deterministic: bool = Field(True, description="torch's deterministic algorithms while the stages run: the "
                                                  "same seed and inputs give the same models and labels")
    tasks: CommaList = Field(default_factory=lambda: ["query_ad"],
                             description="built-in task names or paths to your own task TOML files")
    data: dict[str, InputData] = Field(default_factory=dict,
                                       description="per task name: your own labeled data (path + columns) "
                                                   "instead of the built-in sample world")
    stages: CommaList = Field(default_factory=list, description="stages to run, in flow order (default: all "
                                                                "installed stages)")

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one task")
        if len(set(v)) != len(v):
            raise ValueError(f"names a task twice: {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> FlowBase:
        from adnanny_cook.errors import AdNannyCookError
        from adnanny_cook.tasks import load_task

        names: list[str] = []
        problems: list[str] = []
        for i, ref in enumerate(self.tasks):
            try:
                names.append(load_task(ref).name)
            except (AdNannyCookError, OSError, ValueError) as e:
                problems.append(f"`tasks.{i}`: {e}")
        for name, d in self.data.items():
            if names and name not in names:
                problems.append(f"`data.{name}`: no such task in `tasks` (tasks: {names})")
            if not Path(d.path).is_file():
                problems.append(f"`data.{name}.path`: file {d.path!r} does not exist")
        tables = [n for n, f in type(self).model_fields.items() if n not in FlowBase.model_fields]
        for i, s in enumerate(self.stages):
            if s not in tables:
                import difflib

                near = difflib.get_close_matches(s, tables, n=1)
                problems.append(f"`stages.{i}`: unknown stage {s!r}" + (f" (did you mean `{near[0]}`?)" if near
                                                                         else f"; installed: {tables}"))
        if problems:
            raise ValueError("; ".join(problems))
        if not self.stages:
            self.stages = tables
        else:  # always flow order, whatever order the user wrote
            self.stages = [t for t in tables if t in self.stages]
        return self

    # ------------------------------------------------------------------ helpers the engine and stages use
    def task_specs(self) -> dict[str, Any]:
        """name -> adnanny-cook `TaskSpec` of every task of the run (built-in or the user's file)."""
        from adnanny_cook.tasks import load_task

        return {s.name: s for s in (load_task(ref) for ref in self.tasks)}

    def task_hashes(self) -> dict[str, str]:
        """name -> sha256 of the task definition (the manifests record it; a changed prompt reruns the flow)."""
        return {n: s.hash for n, s in self.task_specs().items()}

    def stage_config(self, name: str) -> Any:
        return getattr(self, name)


# ---------------------------------------------------------------------------------------------------- stages
def installed_stages() -> dict[str, Any]:
    """name -> Stage of every stage module present, in flow order.

    Each `adnanny.stages.<name>` module registers its `Stage` in `adnanny.stages.STAGES` (or defines it as
    `STAGE`); a module that is not there yet (a stage still being written) is simply absent, while one that
    fails to import for another reason raises — a broken stage must not silently vanish from the flow.
    """
    from adnanny import stages as pkg

    for name in pkg.STAGE_ORDER:
        modname = f"adnanny.stages.{name}"
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            raise
        st = getattr(mod, "STAGE", None)
        if st is not None and name not in pkg.STAGES:
            pkg.STAGES[name] = st
    order = {n: i for i, n in enumerate(pkg.STAGE_ORDER)}
    return dict(sorted(pkg.STAGES.items(), key=lambda kv: order.get(kv[0], len(order))))


@functools.lru_cache(maxsize=32)
def _model_for(key: tuple[tuple[str, type[Any]], ...]) -> type[FlowBase]:
    fields: dict[str, Any] = {}
    for name, cfg in key:
        if name in FlowBase.model_fields:
            raise FlowConfigError(f"stage name `{name}` clashes with a top-level flow key")
        doc = (cfg.__doc__ or "").strip().splitlines()
        fields[name] = (cfg, Field(default_factory=cfg, description=f"the `{name}` stage" +
                                   (f": {doc[0]}" if doc else "")))
    return create_model("FlowConfig", __base__=FlowBase, **fields)  # type: ignore[call-overload,no-any-return]


def flow_model(stages: Mapping[str, Any] | None = None) -> type[FlowBase]:
    """The flow config model for `stages` (name -> Stage, in flow order; default: the installed ones): `FlowBase`
    plus one table per stage typed by its `Config` (an `adnanny_cook.settings.Settings` subclass)."""
    stages = installed_stages() if stages is None else stages
    return _model_for(tuple((n, s.Config) for n, s in stages.items()))


def resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """`tasks` entries that are paths and `data.*.path`, made absolute against `base` (the config's folder)."""
    out = dict(data)
    if isinstance(out.get("tasks"), list):
        out["tasks"] = [str((base / t).resolve()) if isinstance(t, str) and (t.endswith(".toml") or "/" in t)
                        and not Path(t).is_absolute() else t for t in out["tasks"]]
    if isinstance(out.get("data"), dict):
        dd = {}
        for k, v in out["data"].items():
            if isinstance(v, dict) and isinstance(v.get("path"), str) and not Path(v["path"]).is_absolute():
                v = {**v, "path": str((base / v["path"]).resolve())}
            dd[k] = v
        out["data"] = dd
    return out


def _uninstalled_tables(data: Mapping[str, Any], model: type[FlowBase], path: Path) -> None:
    """A table for a flow stage whose module is not installed gets its own sentence, not "unknown key"."""
    from adnanny import stages as pkg

    missing = [k for k in data if k in pkg.STAGE_ORDER and k not in model.model_fields]
    if missing:
        raise FlowConfigError(f"invalid flow config `{path}`: stage(s) {missing} are not installed in this "
                              f"environment (no module adnanny.stages.<name>); installed: "
                              f"{[n for n in model.model_fields if n not in FlowBase.model_fields]}")


def load_flow_config(path: str | Path | None = None, *, cli: Sequence[str] | Any = None,
                     overrides: Mapping[str, Any] | None = None, stages: Mapping[str, Any] | None = None,
                     default: bool = True) -> FlowBase:
    """Build the flow config: TOML `path` (None -> the embedded default when `default`), flags (`cli`: a list as on
    the command line, or the source `add_settings_flags` returned), then `overrides` (dotted keys allowed:
    {"train.steps": 3}). Raises `FlowConfigError` with one line naming the file and each key at fault."""
    import tomllib

    model = flow_model(stages)
    if path is None and default:
        path = DEFAULT_CONFIG
    over: dict[str, Any] = {}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        cur = over
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = v
    toml_path = Path(path) if path is not None else None
    resolved_file: Path | None = None
    if toml_path is not None:
        if not toml_path.is_file():
            raise FlowConfigError(f"config file `{toml_path}` does not exist")
        try:
            raw = tomllib.loads(toml_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise FlowConfigError(f"config file `{toml_path}` is not valid TOML: {e}") from None
        _uninstalled_tables(raw, model, toml_path)
        # relative paths resolve against the config's folder: write a resolved copy for the loader
        fixed = resolve_paths(raw, toml_path.resolve().parent)
        if fixed != raw:
            import tempfile

            from adnanny.flow import dump_toml

            tmp = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False, encoding="utf-8")
            tmp.write(dump_toml(fixed))
            tmp.close()
            resolved_file = Path(tmp.name)
    over = resolve_paths(over, Path.cwd())
    try:
        cfg = load_settings(model, resolved_file or toml_path, cli=cli, overrides=over, error=FlowConfigError,
                            what="flow config")
    except FlowConfigError as e:
        msg = str(e)
        if resolved_file is not None:
            msg = msg.replace(str(resolved_file), str(toml_path))
        raise FlowConfigError(msg) from None
    finally:
        if resolved_file is not None:
            resolved_file.unlink(missing_ok=True)
    return cfg

