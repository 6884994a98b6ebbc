"""The one config mechanism (`adnanny_cook.settings`): TOML + generated flags + overrides, one error naming the file
and every dotted key, with suggestions; cook's own configs on it keep their documented keys and flags."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from adnanny_cook.cli import main
from adnanny_cook.config import CookConfig, CorpusConfig, load_config
from adnanny_cook.errors import ConfigError
from adnanny_cook.settings import Settings, load_settings

REQ = {"task": "query_ad", "input": "in.parquet", "out": "o", "base_url": "http://t/v1", "model": "m"}


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float = Field(1.0, gt=0)


class _Teacher(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout_s: float = 10.0
    retries: int = 2


class _Demo(Settings):
    seed: int = Field(0, description="the seed")
    on_bad_row: str = Field("error", description="what to do")
    fast: bool = Field(False, description="go fast")
    teacher: _Teacher = Field(default_factory=_Teacher)
    stages: list[_Stage] = Field(default_factory=list)


class _MyError(Exception):
    pass


def _toml(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_nested_unknown_keys_and_types_are_named_at_once_with_the_file(tmp_path: Path) -> None:
    f = _toml(tmp_path, 'sed = 1\n[teacher]\ntimout_s = 3\nretries = "x"\n[[stages]]\nname = "a"\nweigth = 2\n'
                        '[[stages]]\nname = "b"\nweight = -1\n')
    with pytest.raises(_MyError) as e:
        load_settings(_Demo, f, error=_MyError, what="demo config")
    msg = str(e.value)
    assert msg.startswith(f"invalid demo config `{f}`: ") and "\n" not in msg
    for part in ("unknown key `sed` (did you mean `seed`?)",
                 "unknown key `teacher.timout_s` (did you mean `timeout_s`?)",
                 "`teacher.retries` must be a valid integer, unable to parse string as an integer, got 'x'",
                 "unknown key `stages.0.weigth` (did you mean `weight`?)",
                 "`stages.1.weight` must be greater than 0, got -1"):
        assert part in msg, (part, msg)


def test_precedence_overrides_then_flags_then_toml_and_no_environment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEED", "99")      # a stray shell variable never configures a run
    monkeypatch.setenv("FAST", "true")
    f = _toml(tmp_path, 'seed = 1\non_bad_row = "quarantine"\n[teacher]\nretries = 5\n')
    assert load_settings(_Demo, f).seed == 1 and load_settings(_Demo, f).fast is False
    cfg = load_settings(_Demo, f, cli=["--seed", "2", "--teacher.timeout_s", "4", "--fast", "true"])
    assert (cfg.seed, cfg.teacher.timeout_s, cfg.teacher.retries, cfg.fast) == (2, 4.0, 5, True)
    assert load_settings(_Demo, f, cli=["--seed", "2"], overrides={"seed": 3, "fast": None}).seed == 3
    assert type(cfg) is _Demo and _Demo().seed == 0
    assert load_settings(_Demo, cli=["--on-bad-row", "x"]).on_bad_row == "x"   # both spellings of a flag
    assert load_settings(_Demo, cli=["--on_bad_row", "y"]).on_bad_row == "y"
    with pytest.raises(SystemExit):
        load_settings(_Demo, cli=["--sede", "1"])


def test_flat_files_group_keys_in_tables_whose_names_are_ignored(tmp_path: Path) -> None:
    class _Flat(Settings):
        lr: float = 1e-4
        steps: int = 10

    f = _toml(tmp_path, "[optim]\nlr = 0.5\n[schedule]\nsteps = 3\n")
    cfg = load_settings(_Flat, f, flat=True, cli=["--steps", "4"])
    assert (cfg.lr, cfg.steps) == (0.5, 4)
    with pytest.raises(ConfigError, match=r"config file `.*twice.toml` sets `lr` twice"):
        load_settings(_Flat, _toml(tmp_path, "lr = 1\n[optim]\nlr = 2\n", "twice.toml"), flat=True)
    with pytest.raises(ConfigError, match=r"unknown key `stesp` \(did you mean `steps`\?\)"):
        load_settings(_Flat, _toml(tmp_path, "[x]\nstesp = 1\n", "typo.toml"), flat=True)


def test_missing_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(_MyError, match=r"config file `.*nope.toml` does not exist"):
        load_settings(_Demo, tmp_path / "nope.toml", error=_MyError)
    with pytest.raises(ConfigError, match=r"config file `.*bad.toml` is not valid TOML"):
        load_settings(_Demo, _toml(tmp_path, "seed = [", "bad.toml"))


def test_cook_config_keys_errors_and_table(tmp_path: Path) -> None:
    body = "".join(f'{k} = "{v}"\n' for k, v in REQ.items())
    f = _toml(tmp_path, body + 'k = "many"\nexecuter = "ray"\non-bad-row = "quarantine"\ncolumns = "query"\n',
              "cook.toml")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"invalid cook config `{f}`: ")
    for part in ("unknown key `executer` (did you mean `executor`?)",
                 "unknown key `on-bad-row` (did you mean `on_bad_row`?)",
                 "`k` must be a valid integer, unable to parse string as an integer, got 'many'",
                 "`columns`: 'query' is not `task_field=file_column`"):
        assert part in msg, (part, msg)
    with pytest.raises(ConfigError, match=r"`input` is required \(set it in the TOML file or with --input\)"):
        load_config(None, {k: v for k, v in REQ.items() if k != "input"})
    wrapped = _toml(tmp_path, "[cook]\n" + body + 'variants = ["steps"]\n[cook.columns]\nquery = "q"\n', "w.toml")
    cfg = load_config(wrapped, {"k": "2"})
    assert type(cfg) is CookConfig and cfg.k == 2 and cfg.variants == ["steps"] and cfg.columns == {"query": "q"}
    assert pickle.loads(pickle.dumps(cfg)) == cfg and CookConfig(**cfg.to_dict()) == cfg    # ray workers
    assert load_config(None, {**REQ, "variants": "steps, example"}).variant_ids() == ["steps", "example"]
    corpus = load_config(None, {"task": "query_ad", "input": "x", "out": "o", "labels": "label"}, kind=CorpusConfig)
    assert corpus.spec.label_fields.keys() == {"label"}
    with pytest.raises(ConfigError, match=r"^invalid corpus config: unknown key `model`$"):   # not a corpus key
        load_config(None, {"task": "query_ad", "input": "x", "out": "o", "model": "m"}, kind=CorpusConfig)


def test_cook_cli_flags_are_generated_from_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--on_bad_row", "--on-bad-row", "--self-consistency-min-sim", "--k", "--config", "--json"):
        assert flag in out, flag
    assert "candidates per input" in out          # the field's description is the help text
    args = ["--task", "query_ad", "--input", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]
    assert main(["corpus", *args, "--labels", "label,nope"]) == 2
    assert "task `query_ad` has no label fields ['nope']" in capsys.readouterr().err
    assert main(["corpus", *args, "--eval-fraction", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnanny-cook corpus: error: invalid corpus config: `eval_fraction` must be less than 1")
    with pytest.raises(SystemExit):
        main(["corpus", *args, "--eval-fractoin", "0.2"])
