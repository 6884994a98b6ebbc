"""`adnanny run/status/report/lineage` on toy stages (patched in as the installed stages), and the console
script itself."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import adnanny.config
from adnanny.cli import main

_TOYS = Path(__file__).with_name("test_flow_toys.py")


def _toys():
    spec = importlib.util.spec_from_file_location("adnanny_test_toys_cli", _TOYS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TOYS = _toys()


@pytest.fixture
def toys(monkeypatch: pytest.MonkeyPatch) -> dict:
    st = TOYS.toy_stages()
    monkeypatch.setattr(adnanny.config, "installed_stages", lambda: st)
    return st


def _flow_toml(tmp_path: Path) -> Path:
    f = tmp_path / "flow.toml"
    f.write_text("seed = 1\n[cook]\nrows = 6\n")
    return f


def test_run_status_report(tmp_path: Path, toys: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--config", str(_flow_toml(tmp_path)), "--out", str(out), "--train.steps", "2"]) == 0
    text = capsys.readouterr().out
    assert "[1/3] cook: running" in text and "[3/3] label: done" in text
    assert f"report: {out / 'report' / 'report.md'}" in text
    assert json.loads((out / "train" / "manifest.json").read_text())["config"]["steps"] == 2

    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["stage", "state", "wall", "attempts", "finished"]
    states = {ln.split()[0]: ln.split()[1] for ln in text.splitlines()[1:]}
    assert states == {"cook": "done", "train": "done", "align": "not", "quantize": "not", "label": "done",
                      "distill": "not"}
    assert main(["status", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["stage"]: r["attempts"] for r in rows}["label"] == 1

    (out / "report" / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "report.md").is_file() and "report:" in capsys.readouterr().out

    # a rerun of the same command skips everything
    assert main(["run", "--config", str(_flow_toml(tmp_path)), "--out", str(out), "--train.steps", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("skipped (unchanged") == 3 and "running" not in text


def test_errors_exit_with_one_line(tmp_path: Path, toys: dict, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstesp = 3\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "adnanny: error: invalid flow config" in err and "unknown key `train.stesp` (did you mean `steps`?)" in err
    assert main(["status", str(tmp_path / "nowhere")]) == 1
    assert "run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["run", "--no-such-flag", "1"])
    assert e.value.code == 2


def test_lineage_command(tmp_path: Path, toys: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--config", str(_flow_toml(tmp_path)), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["lineage", str(out), "--id", "r1"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[1].startswith("label  [done]")
    assert "teacher_prompt: query 1 / ad" in text and "base_model: /models/toy-base (outside the run)" in text
    assert main(["lineage", str(out), "--id", "r1", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)
    assert tree["root"]["stage"] == "label"
    assert main(["lineage", str(out), "--id", "nope"]) == 1
    assert "id 'nope' is not known to any stage" in capsys.readouterr().err


def test_dry_run_lists_supports_and_never_pretends(tmp_path: Path, toys: dict,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--dry-run", "--config", str(_flow_toml(tmp_path))]) == 3
    text = capsys.readouterr().out
    assert "[would run: not run yet]" in text
    assert "[NOT YET] FP8 serving on vLLM — toy: no vLLM here" in text
    assert "[NOT YET] the `align` stage — no module adnanny.stages.align" in text  # toys: 3 of the 6 stages
    assert "3 of 7 capabilities this config asks for are supported" in text
    assert not out.exists(), "a dry run writes nothing"
    assert main(["run", "--out", str(out), "--dry-run", "--label.fp8_supported", "true", "--json",
                 "--config", str(_flow_toml(tmp_path))]) == 3
    js = json.loads(capsys.readouterr().out)
    assert all(s["supported"] for s in js["stages"]["label"]["supports"]) and js["stages"]["label"]["plan"] == "run"
    assert js["unsupported"] == 3 and js["stages"]["distill"]["plan"] is None


def test_console_script_help() -> None:
    r = subprocess.run([Path(sys.executable).with_name("adnanny"), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "run" in r.stdout and "lineage" in r.stdout
    r = subprocess.run([sys.executable, "-m", "adnanny", "lineage", "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--id" in r.stdout
