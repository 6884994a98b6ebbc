"""`adnanny run --dry-run` on examples/paper-scale.toml with the installed stages: every key validated, each
stage's `supports` listed as the stage states it, nothing written, exit 3 while anything is not supported."""

from __future__ import annotations

from pathlib import Path

import pytest

from adnanny.cli import main
from adnanny.config import installed_stages

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "paper-scale.toml"


def test_paper_scale_dry_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "never-written"
    rc = main(["run", "--config", str(EXAMPLE), "--dry-run", "--out", str(out)])
    text = capsys.readouterr().out
    assert text.startswith("flow config valid: stages ")
    for name in installed_stages():
        assert f"\n{name}" in text
    # on a CPU machine without vllm, something must be NOT YET; never all "yes"
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("[")]
    assert lines and all(ln.strip().startswith(("[    yes]", "[NOT YET]")) for ln in lines)
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        assert rc == 3 and "[NOT YET] vLLM engine" in text
    assert "capabilities this config asks for are supported" in text
    assert not out.exists()


def test_paper_scale_every_key_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "paper.toml"
    bad.write_text(EXAMPLE.read_text().replace("[label]\n", "[label]\nengnie = \"vllm\"\n", 1))
    assert main(["run", "--config", str(bad), "--dry-run"]) == 2
    assert "unknown key `label.engnie` (did you mean `engine`?)" in capsys.readouterr().err
