"""The flow engine on toy stages: manifests validate, a rerun is a no-op, changes rerun downstream, a stage killed
with SIGKILL resumes in its folder and ends with the same outputs as an uninterrupted run, failures are recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adnanny.config import load_flow_config
from adnanny.flow import FlowError, Manifest, hash_tree, plan_flow, read_manifest, run_flow, stage_states

_TOYS = Path(__file__).with_name("test_flow_toys.py")


def _toys():
    spec = importlib.util.spec_from_file_location("adnanny_test_toys", _TOYS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


TOYS = _toys()


def _cfg(run_dir: Path, **over):
    return load_flow_config(None, stages=TOYS.toy_stages(), default=False,
                            overrides={"run_dir": str(run_dir), **over})


def test_run_writes_valid_manifests_and_rerun_is_a_noop(tmp_path: Path) -> None:
    st = TOYS.toy_stages()
    cfg = _cfg(tmp_path / "run")
    logs: list[str] = []
    run_flow(cfg, st, log=logs.append, report=False)
    for name in ("cook", "train", "label"):
        raw = json.loads((tmp_path / "run" / name / "manifest.json").read_text())
        m = Manifest.model_validate(raw)
        assert m.status == "done" and m.attempts == 1 and m.wall_s is not None
        assert m.tasks["query_ad"] and m.versions["adnanny"] and m.outputs_hash
        assert m.outputs_hash == hash_tree(tmp_path / "run" / name)
    train = read_manifest(tmp_path / "run" / "train")
    assert train.inputs["cook"]["outputs_hash"] == read_manifest(tmp_path / "run" / "cook").outputs_hash
    assert train.lineage == {"corpus": "cook/corpus.jsonl", "base_model": "/models/toy-base"}
    assert train.config == {"steps": 5, "base": "/models/toy-base"}
    assert read_manifest(tmp_path / "run" / "cook").metrics["chunks_written"] is None
    assert (tmp_path / "run" / "flow.toml").is_file()
    assert any("[cook]" in line and "chunk" in line for line in logs)

    before = {n: (tmp_path / "run" / n / "manifest.json").read_bytes() for n in ("cook", "train", "label")}
    logs.clear()
    run_flow(cfg, st, log=logs.append, report=False)
    assert [line for line in logs if "skipped" in line] and not [line for line in logs if "running" in line]
    assert before == {n: (tmp_path / "run" / n / "manifest.json").read_bytes() for n in ("cook", "train", "label")}
    assert all(p.action == "skip" for p in plan_flow(cfg, st))


def test_changed_config_reruns_that_stage_and_downstream_only(tmp_path: Path) -> None:
    st = TOYS.toy_stages()
    run_flow(_cfg(tmp_path / "r"), st, log=lambda s: None, report=False)
    cook_key = read_manifest(tmp_path / "r" / "cook").key
    cfg = _cfg(tmp_path / "r", **{"train.steps": 7})
    plans = {p.name: p.action for p in plan_flow(cfg, st)}
    assert plans == {"cook": "skip", "train": "rerun", "label": "run"}
    logs: list[str] = []
    run_flow(cfg, st, log=logs.append, report=False)
    assert read_manifest(tmp_path / "r" / "cook").key == cook_key
    assert read_manifest(tmp_path / "r" / "train").config["steps"] == 7
    assert any("cook: skipped" in s for s in logs)
    assert any("train: rerunning (config keys ['steps'])" in s for s in logs)
    assert any("label: rerunning (inputs ['train'])" in s for s in logs)
    # a changed seed changes every key
    assert {p.action for p in plan_flow(_cfg(tmp_path / "r", seed=5), st)} == {"rerun", "run"}


def test_missing_artifact_reruns_the_stage(tmp_path: Path) -> None:
    st = TOYS.toy_stages()
    cfg = _cfg(tmp_path / "r")
    run_flow(cfg, st, log=lambda s: None, report=False)
    (tmp_path / "r" / "train" / "log.jsonl").unlink()
    assert {p.name: p.action for p in plan_flow(cfg, st)}["train"] == "rerun"
    run_flow(cfg, st, log=lambda s: None, report=False)
    assert (tmp_path / "r" / "train" / "log.jsonl").is_file()


def test_failing_stage_is_recorded_and_resumes(tmp_path: Path) -> None:
    st = TOYS.toy_stages()
    cfg = _cfg(tmp_path / "r")

    class Boom(type(st["train"])):
        def run(self, ctx):
            raise ValueError("corpus row 3: bad label 'meh'")

    broken = {**st, "train": Boom()}
    with pytest.raises(FlowError, match=r"stage `train` failed: ValueError: corpus row 3: bad label 'meh'"):
        run_flow(cfg, broken, log=lambda s: None, report=False)
    m = read_manifest(tmp_path / "r" / "train")
    assert m.status == "failed" and "bad label" in m.error
    assert {r["stage"]: r["state"] for r in stage_states(tmp_path / "r")}["train"] == "failed"
    run_flow(cfg, st, log=lambda s: None, report=False)
    m = read_manifest(tmp_path / "r" / "train")
    assert m.status == "done" and m.attempts == 2 and m.resumed


def test_unselected_requirement_must_be_done(tmp_path: Path) -> None:
    st = TOYS.toy_stages()
    with pytest.raises(FlowError, match=r"stage `train` requires `cook`, which is neither in `stages`"):
        run_flow(_cfg(tmp_path / "r", stages=["train", "label"]), st, log=lambda s: None, report=False)
    run_flow(_cfg(tmp_path / "r", stages=["cook"]), st, log=lambda s: None, report=False)
    run_flow(_cfg(tmp_path / "r", stages=["train", "label"]), st, log=lambda s: None, report=False)
    assert read_manifest(tmp_path / "r" / "label").status == "done"


def test_bad_stage_result_is_refused(tmp_path: Path) -> None:
    st = TOYS.toy_stages()

    class Liar(type(st["cook"])):
        def run(self, ctx):
            res = super().run(ctx)
            res.artifacts["model"] = "no-such-dir"
            return res

    with pytest.raises(FlowError, match=r"artifact `model` = 'no-such-dir' does not exist"):
        run_flow(_cfg(tmp_path / "r"), {**st, "cook": Liar()}, log=lambda s: None, report=False)


def test_locked_run_dir_is_refused(tmp_path: Path) -> None:
    from adnanny_cook.lock import FolderLock, FolderLockedError

    (tmp_path / "r").mkdir()
    with FolderLock(tmp_path / "r", "someone else"):
        with pytest.raises(FolderLockedError, match="someone else"):
            run_flow(_cfg(tmp_path / "r"), TOYS.toy_stages(), log=lambda s: None, report=False)


_CHILD = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("toys", {toys!r})
    toys = importlib.util.module_from_spec(spec); spec.loader.exec_module(toys)
    from adnanny.config import load_flow_config
    from adnanny.flow import run_flow
    st = toys.toy_stages()
    cfg = load_flow_config(None, stages=st, default=False,
                           overrides={{"run_dir": {run!r}, "cook.rows": 12, "cook.delay": {delay}}})
    run_flow(cfg, st, report=False)
""")


def _child(run: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD.format(toys=str(_TOYS), run=str(run), delay=delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def test_sigkill_mid_stage_then_resume_gives_the_same_outputs(tmp_path: Path) -> None:
    run = tmp_path / "killed"
    p = _child(run, 0.4)
    chunks = run / "cook" / "chunks"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(chunks.glob("*.jsonl"))) < 2:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=10)
    assert 2 <= len(list(chunks.glob("*.jsonl"))) < 4, "the kill must land mid-stage"
    assert read_manifest(run / "cook").status == "running"
    assert {r["stage"]: r["state"] for r in stage_states(run)}["cook"] == "interrupted"

    p = _child(run, 0.4)  # same config: the kill, not a change, is what the engine must see
    out = p.communicate(timeout=120)[0].decode()
    assert p.returncode == 0, out
    assert "cook: resuming (attempt 2)" in out
    m = read_manifest(run / "cook")
    assert m.status == "done" and m.attempts == 2 and m.resumed

    clean = tmp_path / "clean"
    p = _child(clean, 0.4)
    assert p.communicate(timeout=120) and p.returncode == 0
    for name in ("cook", "train", "label"):
        assert read_manifest(run / name).outputs_hash == read_manifest(clean / name).outputs_hash, name


def test_deterministic_torch_is_scoped_to_the_flow() -> None:
    """The flow turns torch's deterministic algorithms on while stages run and restores the caller's setting."""
    import torch

    from adnanny.flow import deterministic_torch

    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(False):
        assert not torch.are_deterministic_algorithms_enabled()
