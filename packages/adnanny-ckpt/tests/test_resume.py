"""A conversion interrupted midway resumes and redoes only the unfinished ranks / shards."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import adnanny_ckpt.hf2mcore as h2m
import adnanny_ckpt.mcore2hf as m2h
from adnanny_ckpt import hf_to_mcore, mcore_to_hf, verify


class Boom(Exception):
    pass


def _counting(fn, fail_at=None):
    calls = []

    def wrapper(*a, **k):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise Boom("simulated crash")
        return fn(*a, **k)

    return wrapper, calls


def test_hf_to_mcore_resumes(tiny_bf16_dir, tmp_path, monkeypatch):
    out = tmp_path / "m"
    real = h2m.write_rank_file
    crash, _ = _counting(real, fail_at=4)
    monkeypatch.setattr(h2m, "write_rank_file", crash)
    with pytest.raises(Boom):
        hf_to_mcore(tiny_bf16_dir, out, pp=2, ep=2, tp=2, progress=False)
    assert not out.exists()
    partial = json.loads((tmp_path / "m.partial" / "adnanny_ckpt.json").read_text())
    assert not partial["complete"] and not partial["ranks"]  # the manifest is not rewritten per rank
    recs = [json.loads(f.read_text()) for f in (tmp_path / "m.partial" / ".records").glob("rank_*.json")]
    assert len([r for r in recs if r.get("file")]) == 3
    count, calls = _counting(real)
    monkeypatch.setattr(h2m, "write_rank_file", count)
    hf_to_mcore(tiny_bf16_dir, out, pp=2, ep=2, tp=2, progress=False)
    total = sum(1 for r in json.loads((out / "adnanny_ckpt.json").read_text())["ranks"].values() if r.get("file"))
    assert len(calls) == total - 3
    verify(out, tiny_bf16_dir, values=True)
    assert not (tmp_path / "m.partial").exists()


def test_mcore_to_hf_resumes(tiny_bf16_dir, tmp_path, monkeypatch):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", ep=2, progress=False)
    real = m2h.SafetensorsStreamWriter.commit  # publishing a shard = the streamed file's commit
    crash, _ = _counting(real, fail_at=3)
    monkeypatch.setattr(m2h.SafetensorsStreamWriter, "commit", crash)
    with pytest.raises(Boom):
        mcore_to_hf(m, tmp_path / "h", max_shard_bytes=200 << 10, progress=False)
    count, calls = _counting(real)
    monkeypatch.setattr(m2h.SafetensorsStreamWriter, "commit", count)
    h = mcore_to_hf(m, tmp_path / "h", max_shard_bytes=200 << 10, progress=False)
    n = len(json.loads((h / "adnanny_ckpt.json").read_text())["shards"])
    assert len(calls) == n - 2
    verify(h)


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path):
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    cfg = tiny_deepseek_v3_config(hidden_size=512, n_routed_experts=32, n_group=4, moe_intermediate_size=512)
    src = write_synthetic_checkpoint(tmp_path / "src", cfg, dtype="fp8", seed=0)
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "adnanny_ckpt.cli", "hf-to-mcore", "--hf", str(src), "--out", str(out), "--ep", "8",
           "--pp", "2", "--no-progress"]
    p = subprocess.Popen(cmd)
    man = tmp_path / "m.partial" / "adnanny_ckpt.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if man.exists() and len(list((man.parent / ".records").glob("rank_*.json"))) >= 3:
            break
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not out.exists()
    assert subprocess.run(cmd).returncode == 0
    verify(out, src, values=True)
