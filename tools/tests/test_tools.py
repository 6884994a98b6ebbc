"""Tests of the monorepo tools: per-package release bumps and package discovery."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import check_wheels  # noqa: E402
import release  # noqa: E402

PACKAGES = ["adnanny-ckpt", "adnanny-cook", "adnanny-eval", "adnanny-megatron", "adnanny-rl",
            "adnanny-serve", "adnanny-sft"]


def test_discover_finds_every_package_with_its_own_version():
    dists = check_wheels.discover()
    assert [d.name for d in dists] == PACKAGES + ["adnanny"]
    for d in dists:
        meta = tomllib.loads((d.path / "pyproject.toml").read_text())
        assert "version" in meta["project"]["dynamic"], d.name  # single source: __about__.py
        assert (d.path / "src" / d.module / "py.typed").is_file(), d.name
        assert (d.path / "README.md").is_file() and (d.path / "CHANGELOG.md").is_file(), d.name


def test_sibling_dependencies_are_ranges_never_pins():
    for d in check_wheels.discover():
        for dep in tomllib.loads((d.path / "pyproject.toml").read_text())["project"]["dependencies"]:
            if dep.startswith("adnanny"):
                assert "==" not in dep, f"{d.name} pins a sibling: {dep}"


def test_gpu_only_dependencies_are_optional_extras():
    for d in check_wheels.discover():
        deps = " ".join(tomllib.loads((d.path / "pyproject.toml").read_text())["project"]["dependencies"])
        assert "vllm" not in deps and "transformer-engine" not in deps, d.name


@pytest.fixture
def repo_copy(tmp_path):
    """A copy of the packages' metadata (no sources beyond __about__) to release into."""
    for d in check_wheels.discover():
        dst = tmp_path / d.path.relative_to(ROOT)
        (dst / "src" / d.module).mkdir(parents=True)
        for f in ("pyproject.toml", "README.md", "CHANGELOG.md"):
            shutil.copy(d.path / f, dst / f)
        shutil.copy(d.path / "src" / d.module / "__about__.py", dst / "src" / d.module / "__about__.py")
    return tmp_path


def test_release_bumps_one_package_and_nothing_else(repo_copy):
    eval_dir = repo_copy / "packages" / "adnanny-eval"
    cl = eval_dir / "CHANGELOG.md"
    cl.write_text(cl.read_text() + "### Added\n- defect views\n")
    before = {p: p.read_bytes() for p in repo_copy.rglob("*") if p.is_file()}
    old = check_wheels.read_version(eval_dir / "src" / "adnanny_eval" / "__about__.py")
    new = release.release("adnanny-eval", "minor", root=repo_copy, today=dt.date(2026, 11, 27))
    major, minor, _ = map(int, old.split("."))
    assert new == f"{major}.{minor + 1}.0"
    assert check_wheels.read_version(eval_dir / "src" / "adnanny_eval" / "__about__.py") == new
    text = cl.read_text()
    assert f"## [Unreleased]\n\n## [{new}] - 2026-11-27" in text and "- defect views" in text
    changed = {p for p in before if p.read_bytes() != before[p]}
    assert changed == {cl, eval_dir / "src" / "adnanny_eval" / "__about__.py"}


def test_release_refuses_empty_changelog_and_bad_bumps(repo_copy):
    cl = repo_copy / "packages" / "adnanny-ckpt" / "CHANGELOG.md"
    cl.write_text("# Changelog\n\n## [Unreleased]\n\n## [0.1.0] - 2026-01-01\n- first\n")
    with pytest.raises(release.ReleaseError, match="`Unreleased` section of CHANGELOG.md is empty"):
        release.release("adnanny-ckpt", "patch", root=repo_copy)
    with pytest.raises(release.ReleaseError, match="unknown package `adnanny-nope`"):
        release.release("adnanny-nope", "patch", root=repo_copy)
    with pytest.raises(release.ReleaseError, match="not greater than"):
        release.next_version("0.2.0", "0.1.9")
    with pytest.raises(release.ReleaseError, match="`bump` must be"):
        release.next_version("0.2.0", "huge")


def test_sync_workspace_sees_a_console_script_the_install_lacks(tmp_path):
    """The CI failure this tool exists for: a script added to pyproject after the editable install."""
    import sync_workspace

    integ = next(m for m in sync_workspace.members() if m.name == "adnanny")
    assert sync_workspace.stale_reason(integ) is None  # `hatch run test` synced before pytest started
    copy = tmp_path / "integration"
    copy.mkdir()
    text = (integ.path / "pyproject.toml").read_text()
    copy.joinpath("pyproject.toml").write_text(
        text.replace("[project.scripts]\n", '[project.scripts]\nadnanny-extra = "adnanny.cli:main"\n'))
    reason = sync_workspace.stale_reason(sync_workspace.Member(integ.name, copy, integ.version, ()))
    assert reason is not None and "console_scripts:adnanny-extra" in reason
    bumped = sync_workspace.Member(integ.name, integ.path, "9.9.9", ())
    assert "pyproject says 9.9.9" in sync_workspace.stale_reason(bumped)


def test_sync_workspace_check_passes_on_the_synced_env():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "sync_workspace.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
