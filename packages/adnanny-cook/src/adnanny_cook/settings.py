"""One config mechanism for every AdNanny package: a typed pydantic-settings model, read from an optional TOML file,
overridden by flags that pydantic-settings generates from the same model, overridden by a dict.

Why here: adnanny-cook is the base dependency of sft, serve, rl and the flow, so the glue (source order, flag
spellings, error wording) lives once and every package's config errors read alike. Why pydantic-settings: TOML
support (`TomlConfigSettingsSource`), nested tables, a CLI built from the model (`CliSettingsSource`), and
`extra="forbid"` naming every unknown key; pydantic already comes with fastapi, so the extra cost of a package
installed alone is one small pure-Python wheel.

A package declares its config as a subclass of `Settings` (fields with `Field(description=...)`: the
descriptions are the `--help` text), then calls

    cfg = load_settings(MyConfig, "my.toml", cli=["--beta", "0.02"], overrides={"seed": 1},
                        error=MyConfigError, what="my config")

Precedence: `overrides` > flags > TOML > defaults. Every problem of one load is reported in one `error(...)` whose
message names the file and each key (nested ones dotted: `tasks.0.weight`); an unknown key gets the closest known
key of its table as a suggestion. See the package README ("One config mechanism") for the flag rules.
"""

from __future__ import annotations

import difflib
import tomllib
import types
import typing
from argparse import ArgumentParser
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import (BaseSettings, CliSettingsSource, InitSettingsSource, PydanticBaseSettingsSource,
                               SettingsConfigDict, SettingsError, TomlConfigSettingsSource)

from adnanny_cook.errors import ConfigError

__all__ = ["Settings", "add_settings_flags", "format_validation_error", "load_settings", "split_commas"]

S = TypeVar("S", bound=BaseSettings)


class Settings(BaseSettings):
    """Base of every AdNanny config: unknown keys are errors, defaults are validated, numbers given for a string
    key become strings, and values come ONLY from what the caller passes (no environment variables, no `.env`):
    `SEED=3` in someone's shell must not change a run. Bool flags take a value (`--progress false`) unless a
    subclass sets `cli_implicit_flags=True` (`--x` / `--no-x`)."""

    model_config = SettingsConfigDict(extra="forbid", validate_default=True, coerce_numbers_to_str=True,
                                      cli_kebab_case=False, cli_implicit_flags=False, cli_exit_on_error=True)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   *args: Any, **kwargs: Any) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def split_commas(value: Any) -> Any:
    """`"a, b,c"` -> `["a", "b", "c"]` (a list passes through): a list key given as one comma-separated string,
    from a flag or an overrides dict. Use as `Annotated[list[str], NoDecode, BeforeValidator(split_commas)]`."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


# ---------------------------------------------------------------------------------------------------- flags
def _add_argument(parser: Any, *names: str, **kwargs: Any) -> Any:
    """pydantic-settings' `add_argument`, plus the other spelling of each flag: `--on_bad_row` also answers to
    `--on-bad-row` (and `--no-on-bad-row` for implicit bool flags), and a one-letter key `k` to `--k` as well
    as `-k`, so the flag of a key is always `--` + the key, whichever separator a user types."""
    extra: list[str] = []
    for n in names:
        if n.startswith("--") and "_" in n:
            extra.append(n.replace("_", "-"))
        elif len(n) == 2 and n[0] == "-" and n[1] not in "-h":
            extra.append("-" + n)
    return parser.add_argument(*names, *[e for e in extra if e not in names], **kwargs)


def _cli_source(model: type[BaseSettings], **kwargs: Any) -> CliSettingsSource[Any]:
    return CliSettingsSource(model, add_argument_method=_add_argument, **kwargs)


def add_settings_flags(parser: ArgumentParser, model: type[BaseSettings]) -> CliSettingsSource[Any]:
    """Add one flag per key of `model` to `parser` (e.g. a subcommand's parser, beside its own `--config`/`--json`)
    and return the source; after `ns = top.parse_args(argv)`, pass `cli=source(parsed_args=ns)` to
    `load_settings`. Attributes of `ns` that are not keys of `model` (the caller's own flags) are ignored."""
    return _cli_source(model, root_parser=parser)


# ---------------------------------------------------------------------------------------------------- errors
def _submodel(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The (nested) model that holds the last key of `loc` (walking lists/dicts/optionals of models)."""
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            f = cur.model_fields.get(str(part))
            if f is None:
                return None
            cur = f.annotation
            continue
        cur = _inner(cur)
        if cur is None:
            return None
        if isinstance(cur, type) and issubclass(cur, BaseModel) and str(part) in cur.model_fields:
            cur = cur.model_fields[str(part)].annotation
    cur = _inner(cur) if not (isinstance(cur, type) and issubclass(cur, BaseModel)) else cur
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _inner(tp: Any) -> Any:
    """The model inside `list[M]`, `dict[str, M]`, `M | None`, `Annotated[M, ...]` (else None)."""
    for _ in range(4):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        origin = typing.get_origin(tp)
        if origin is None:
            return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if origin is typing.Annotated:
            tp = args[0]
        elif origin in (list, tuple, set, frozenset, Sequence):
            tp = args[0] if args else None
        elif origin in (dict, Mapping):
            tp = args[-1] if args else None
        elif origin in (typing.Union, types.UnionType):
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = models[0] if models else None
        else:
            return None
    return None


def _short(value: Any, limit: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def _keyed(key: str, msg: str) -> str:
    """`` `k` must be ...`` reads as a sentence; anything else gets a colon (`` `k`: unable to ...``)."""
    return f"`{key}` {msg}" if msg.startswith(("must ", "is ", "cannot ")) else f"`{key}`: {msg}"


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line for a whole `ValidationError`: `SOURCE: problem; problem; ...`, each problem naming its dotted
    key — ``unknown key `tasks.0.weigth` (did you mean `weight`?)``, `` `input` is required (set it in the TOML
    file or with --input)``, `` `k` must be greater than or equal to 1, got 0`` (pydantic's "Input should be"
    read as "must be"), or a validator's own sentence."""
    lines: list[str] = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if p != "__root__"]
        key = ".".join(str(p) for p in loc)
        kind = e["type"]
        if kind == "extra_forbidden" and loc:
            holder = _submodel(model, loc)
            known = list(holder.model_fields) if holder is not None else []
            near = difflib.get_close_matches(str(loc[-1]).replace("-", "_"), known, n=1)
            lines.append(f"unknown key `{key}`" + (f" (did you mean `{near[0]}`?)" if near else ""))
        elif kind == "missing":
            flag = f" or with --{key.replace('_', '-')}" if len(loc) == 1 else ""
            lines.append(f"`{key}` is required (set it in the TOML file{flag})")
        elif kind in ("value_error", "assertion_error"):
            msg = str(e["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(_keyed(key, msg) if key else msg)
        else:
            msg = str(e["msg"])
            msg = "must be" + msg[len("Input should be"):] if msg.startswith("Input should be") else msg
            lines.append(f"{_keyed(key or 'config', msg)}, got {_short(e.get('input'))}")
    return f"{source}: " + "; ".join(lines)


# ---------------------------------------------------------------------------------------------------- loading
def _read_toml(path: Path, error: Callable[[str], Exception]) -> dict[str, Any]:
    """Check the file exists and parses. Why read it here: a missing file or a syntax error then names the file
    in the caller's error class (pydantic-settings would skip a missing file silently)."""
    if not path.is_file():
        raise error(f"config file `{path}` does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"config file `{path}` is not valid TOML: {e}") from None


def _flatten(data: Mapping[str, Any], path: Path, error: Callable[[str], Exception]) -> dict[str, Any]:
    """`flat=True` files: a [table] only groups keys (its name is ignored); a key set twice is an error."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        items = _flatten(v, path, error).items() if isinstance(v, Mapping) else [(k, v)]
        for kk, vv in items:
            if kk in out:
                raise error(f"config file `{path}` sets `{kk}` twice")
            out[kk] = vv
    return out


def load_settings(model: type[S], path: str | Path | None = None, *,
                  cli: Sequence[str] | CliSettingsSource[Any] | None = None,
                  overrides: Mapping[str, Any] | None = None, error: Callable[[str], Exception] = ConfigError,
                  what: str | None = None, tables: Sequence[str] = (), flat: bool = False) -> S:
    """Build `model` from TOML file `path` (optional), flags and `overrides`, validated as a whole.

    `cli`: the flags as on the command line (a list; pydantic-settings' parser generated from `model` reads them:
    `--help` prints the keys' descriptions, an unknown flag exits 2), or a source from `add_settings_flags` already
    given the parsed namespace. `overrides`: values that win over everything (None values count as "not given").
    `tables`: table names a file may wrap all its keys in (`[cook]`). `flat=True`: the file's tables only group
    keys and their names are ignored (adnanny-sft's format; only for models without nested tables). `error`: the
    exception class raised with the one message (default `ConfigError`); `what` names the config in it
    ("invalid cook config `cook.toml`: ..."). Returns an instance of `model` itself.
    """
    toml = Path(path) if path is not None and str(path) != "" else None
    header: tuple[str, ...] = ()
    flat_values: dict[str, Any] | None = None
    if toml is not None:
        data = _read_toml(toml, error)
        if flat:
            flat_values = _flatten(data, toml, error)
        header = next(((t,) for t in tables if set(data) == {t} and isinstance(data[t], dict)), ())
    init = {k: v for k, v in (overrides or {}).items() if v is not None}
    label = what or f"{model.__name__} config"
    source = f"invalid {label} `{toml}`" if toml is not None else f"invalid {label}"

    class _Sourced(model):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                       init_settings: PydanticBaseSettingsSource, *args: Any, **kwargs: Any
                                       ) -> tuple[PydanticBaseSettingsSource, ...]:
            out: list[PydanticBaseSettingsSource] = [init_settings]
            if cli is not None:
                out.append(cli if isinstance(cli, CliSettingsSource) else
                           _cli_source(settings_cls, cli_parse_args=list(cli),
                                       cli_prog_name=model.model_config.get("cli_prog_name")))
            if flat_values is not None:
                out.append(InitSettingsSource(settings_cls, init_kwargs=flat_values))
            elif toml is not None:
                out.append(TomlConfigSettingsSource(settings_cls, toml_file=toml, toml_table_header=header))
            return tuple(out)

    _Sourced.__name__ = _Sourced.__qualname__ = model.__name__
    try:
        built = _Sourced(**init)
    except ValidationError as e:
        raise error(format_validation_error(e, model, source)) from None
    except SettingsError as e:  # a flag value pydantic-settings cannot parse
        raise error(f"{source}: {e}") from None
    try:  # hand back the caller's own class (picklable, `type(cfg) is model`), not the local subclass
        return model.model_validate(built.model_dump())
    except ValidationError as e:  # pragma: no cover - the same values just validated
        raise error(format_validation_error(e, model, source)) from None
