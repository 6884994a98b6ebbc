"""SFTConfig + CLI on the one config mechanism (adnanny_cook.settings): TOML keys, same-name flag overrides,
unknown keys named with a suggestion, bad values named with the value given, all at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adnanny_sft.cli import main
from adnanny_sft.config import SFTConfig, installed_backends, load_config
from adnanny_sft.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sft.toml"
    p.write_text(text)
    return p


def test_toml_tables_and_flag_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[data]\ncorpus = "c"\ntarget_forms = ["label"]\n[optim]\nlr = 0.001\nbatch_size = 4\n'
                           'lora = true\n')
    cfg = load_config(path, {"lr": "0.5", "max_steps": "7", "tasks": "query_ad,ad_user", "lora": "false"})
    assert type(cfg) is SFTConfig
    assert cfg.corpus == "c" and cfg.target_forms == ["label"] and cfg.batch_size == 4
    assert cfg.lr == 0.5 and cfg.max_steps == 7 and cfg.tasks == ["query_ad", "ad_user"] and cfg.lora is False
    # flags (both spellings) override the file; overrides win over flags
    cfg = load_config(path, {"seed": 3}, cli=["--max-steps", "9", "--batch_size", "2", "--labels", "label",
                                              "--seed", "1"])
    assert (cfg.max_steps, cfg.batch_size, cfg.labels, cfg.seed, cfg.lr) == (9, 2, ["label"], 3, 0.001)


def test_the_hand_written_loader_is_gone() -> None:
    """One mechanism: SFTConfig is adnanny-cook's Settings (pydantic-settings), no private TOML/flag parser."""
    import inspect

    from adnanny_cook.settings import Settings

    import adnanny_sft.cli as cli
    import adnanny_sft.config as config

    assert issubclass(SFTConfig, Settings)
    for mod in (config, cli):
        src = inspect.getsource(mod)
        assert "tomllib" not in src and "_coerce" not in src and "_flatten" not in src


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nlearning_rate = 0.1\n[x]\nbatchsize = 3\n')
    with pytest.raises(ConfigError, match=r"invalid sft config `.*sft\.toml`: unknown key `learning_rate`; "
                                          r"unknown key `batchsize` \(did you mean `batch_size`\?\)"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"`tokeniser`.*did you mean `tokenizer`"):
        load_config(None, {"corpus": "c", "tokeniser": "t"})
    path = _toml(tmp_path, 'corpus = "c"\n[a]\nlr = 1.0\n[b]\nlr = 2.0\n')
    with pytest.raises(ConfigError, match=r"sets `lr` twice"):
        load_config(path)


def test_all_bad_values_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        SFTConfig(corpus="c", lr=-1.0, task_alpha=0.5, task_weighting_mode="both", batch_size=0)
    msg = str(info.value)
    assert msg.startswith("invalid sft config: ") and "\n" not in msg
    for key in ("`lr` must be greater than 0, got -1.0", "`task_alpha` must be greater than or equal to 1, got 0.5",
                "`task_weighting_mode` must be 'sampling' or 'loss', got 'both'",
                "`batch_size` must be greater than or equal to 1, got 0"):
        assert key in msg
    with pytest.raises(ConfigError, match=r"`corpus` is required \(set it in the TOML file or with --corpus\)"):
        SFTConfig()
    with pytest.raises(ConfigError, match="`max_steps` must be a valid integer.*got 'many'"):
        load_config(None, {"corpus": "c", "max_steps": "many"})
    with pytest.raises(ConfigError, match="`max_steps` must be a valid integer.*got 'x'"):
        load_config(None, cli=["--corpus", "c", "--max-steps", "x"])
    with pytest.raises(ConfigError, match="`lora` must be a valid boolean.*got 'maybe'"):
        load_config(None, {"corpus": "c", "lora": "maybe"})
    with pytest.raises(ConfigError, match="`public_ratio` = 0.1 > 0 needs `public_data`"):
        SFTConfig(corpus="c", public_ratio=0.1)
    with pytest.raises(ConfigError, match=r"`target_forms` must be a non-empty subset"):
        SFTConfig(corpus="c", target_forms=["label", "essay"])


def test_device_and_backend_keys() -> None:
    assert SFTConfig(corpus="c").device == "auto" and SFTConfig(corpus="c").backend == "hf"
    names = installed_backends()
    assert names[0] == "hf" and "megatron" in names  # adnanny-megatron registers its entry point
    with pytest.raises(ConfigError, match=r"`backend` must be one of the installed backends \['hf', .*'megatron'.*\], "
                                          r"got 'deepspeed'"):
        SFTConfig(corpus="c", backend="deepspeed")
    with pytest.raises(ConfigError, match=r"`device` must be 'cpu', 'cuda' or 'auto', got 'tpu'"):
        SFTConfig(corpus="c", device="tpu")
    with pytest.raises(ConfigError, match=r"`layout`, `stage_layers`: only a distributed backend reads this"):
        SFTConfig(corpus="c", layout="pp2", stage_layers="1,3")
    with pytest.raises(ConfigError, match=r"`lora` = true: the `megatron` backend trains all weights"):
        SFTConfig(corpus="c", backend="megatron", lora=True)
    cfg = SFTConfig(corpus="c", backend="megatron", layout="pp2,ep2", stage_layers="1,3")
    assert cfg.layout == "pp2,ep2"


def test_cli_config_verb_prints_resolved_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nlr = 0.001\n')
    assert main(["config", "--config", str(path), "--lr", "0.25", "--max-steps", "3", "--lora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lr"] == 0.25 and out["max_steps"] == 3 and out["lora"] is True and out["corpus"] == "c"
    assert main(["config", "--config", str(path), "--lora", "false", "--tasks", "a,b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lora"] is False and out["tasks"] == ["a", "b"]


def test_cli_errors_exit_2_with_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nwarmup = 3\n')
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown key `warmup` (did you mean `warmup_steps`?)" in err and err.count("\n") == 1
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml` does not exist" in capsys.readouterr().err


def test_cli_help_runs_as_a_script() -> None:
    out = subprocess.run([sys.executable, "-m", "adnanny_sft.cli", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--task_weighting_mode" in out and "--instance_beta" in out and "eq. 5" in out
    assert "--allow_pickle" in out and "--backend" in out and "--device" in out
