"""The config: TOML + same-name flags, unknown keys named with a suggestion, cross-field rules; the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from adnanny_rl.cli import main
from adnanny_rl.config import load_config
from adnanny_rl.errors import RLConfigError

BASE = 'policy = "p"\n[[tasks]]\ntask = "query_ad"\ndata = "d"\n'


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rl.toml"
    p.write_text(text)
    return p


def test_toml_then_flags(tmp_path: Path) -> None:
    cfg = load_config(_toml(tmp_path, "beta = 0.1\n" + BASE), cli_args=["--beta", "0.02", "--no-scale_std"])
    assert cfg.beta == 0.02 and cfg.scale_std is False and cfg.tasks[0].task == "query_ad"
    assert cfg.kl_estimator == "k3" and cfg.loss_aggregation == "seq-mean-token-mean"


def test_all_problems_named_at_once(tmp_path: Path) -> None:
    bad = 'bta = 0.1\nsteps = "many"\n' + BASE + "weigth = 2\n"
    with pytest.raises(RLConfigError) as e:
        load_config(_toml(tmp_path, bad))
    msg = str(e.value)
    assert "rl.toml" in msg
    assert "unknown key `bta` (did you mean `beta`?)" in msg
    assert "unknown key `tasks.0.weigth` (did you mean `weight`?)" in msg
    assert "`steps`" in msg


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(RLConfigError, match="`tasks` is empty"):
        load_config(_toml(tmp_path, 'policy = "p"\n'))
    with pytest.raises(RLConfigError, match="`micro_batch`=3 must divide"):
        load_config(_toml(tmp_path, "micro_batch = 3\n" + BASE))
    with pytest.raises(RLConfigError, match="`group_size`"):
        load_config(_toml(tmp_path, "group_size = 1\n" + BASE))
    with pytest.raises(RLConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(RLConfigError, match=r"`tasks.0.class_balance`: only a `labels` reward"):
        load_config(_toml(tmp_path, BASE + 'reward = "retrieval"\nclass_balance = true\n'))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(_toml(tmp_path, "bta = 1\n" + BASE))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adnanny-rl train: error:") and "did you mean `beta`" in err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(_toml(tmp_path, BASE)), "--betta", "1"])
    assert main(["frobnicate"]) == 2
