"""SFTConfig + CLI: TOML keys, same-name flag overrides, unknown keys and bad values named, all at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adnanny_sft.cli import main
from adnanny_sft.config import SFTConfig, load_config
from adnanny_sft.errors import ConfigError


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sft.toml"
    p.write_text(text)
    return p


def test_toml_tables_and_flag_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[data]\ncorpus = "c"\ntarget_forms = ["label"]\n[optim]\nlr = 0.001\nbatch_size = 4\n'
                           'lora = true\n')
    cfg = load_config(path, {"lr": "0.5", "max_steps": "7", "tasks": "query_ad,ad_user", "lora": "false"})
    assert cfg.corpus == "c" and cfg.target_forms == ["label"] and cfg.batch_size == 4
    assert cfg.lr == 0.5 and cfg.max_steps == 7 and cfg.tasks == ["query_ad", "ad_user"] and cfg.lora is False


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nlearning_rate = 0.1\n[x]\nbatchsize = 3\n')
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) in `.*sft.toml`: `batchsize`, `learning_rate`"):
        load_config(path)


def test_all_bad_values_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        SFTConfig(corpus="c", lr=-1.0, task_alpha=0.5, task_weighting_mode="both", batch_size=0)
    msg = str(info.value)
    for key in ("`lr` = -1.0", "`task_alpha` = 0.5", "`task_weighting_mode` = 'both'", "`batch_size` = 0"):
        assert key in msg
    with pytest.raises(ConfigError, match="`corpus` = '': is required"):
        SFTConfig()
    with pytest.raises(ConfigError, match="`max_steps` must be an integer; got 'many'"):
        load_config(None, {"corpus": "c", "max_steps": "many"})
    with pytest.raises(ConfigError, match="`public_ratio` = 0.1: > 0 needs `public_data`"):
        SFTConfig(corpus="c", public_ratio=0.1)


def test_cli_config_verb_prints_resolved_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nlr = 0.001\n')
    assert main(["config", "--config", str(path), "--lr", "0.25", "--max-steps", "3", "--lora", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["lr"] == 0.25 and out["max_steps"] == 3 and out["lora"] is True and out["corpus"] == "c"


def test_cli_errors_exit_2_with_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _toml(tmp_path, 'corpus = "c"\nwarmup = 3\n')
    assert main(["train", "--config", str(path)]) == 2
    assert "`warmup`" in capsys.readouterr().err


def test_cli_help_runs_as_a_script() -> None:
    out = subprocess.run([sys.executable, "-m", "adnanny_sft.cli", "train", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "--task_weighting_mode" in out and "--instance_beta" in out and "eq. 5" in out
