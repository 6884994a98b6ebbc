"""`--workers N`, per-file resume records, re-hashing only what changed, and a clean production import graph."""

import json
import os
import subprocess
import sys

import pytest

import adnanny_ckpt.hf2mcore as h2m
from adnanny_ckpt import hf_to_mcore, mcore_to_hf, verify
from adnanny_ckpt.cli import main


def _rank_hashes(m):
    ranks = json.loads((m / "adnanny_ckpt.json").read_text())["ranks"]
    return {k: v["sha256"] for k, v in ranks.items()}


def test_two_workers_write_the_same_files_as_one(tiny_fp8_dir, tmp_path):
    one = hf_to_mcore(tiny_fp8_dir, tmp_path / "l1", pp=2, ep=2, ckpt_format="legacy", progress=False)
    two = hf_to_mcore(tiny_fp8_dir, tmp_path / "l2", pp=2, ep=2, ckpt_format="legacy", workers=2, progress=False)
    assert _rank_hashes(one) == _rank_hashes(two) and len(_rank_hashes(two)) == 4
    man = json.loads((two / "adnanny_ckpt.json").read_text())
    assert man["workers"] == 2 and man["complete"] and not (two / ".records").exists()
    # EP ranks of one stage stay on one worker: the replicated tensors are still read once per stage
    assert man["source_bytes_read"] == json.loads((one / "adnanny_ckpt.json").read_text())["source_bytes_read"]
    assert verify(two, tiny_fp8_dir, values=True)["ok"]
    assert main(["mcore-to-hf", "--mcore", str(two), "--out", str(tmp_path / "h2"), "--workers", "2",
                 "--max-shard-size", "200KiB", "--no-progress"]) == 0
    h1 = mcore_to_hf(one, tmp_path / "h1", max_shard_bytes=200 << 10, progress=False)
    s1 = json.loads((h1 / "adnanny_ckpt.json").read_text())["shards"]
    s2 = json.loads((tmp_path / "h2" / "adnanny_ckpt.json").read_text())["shards"]
    assert len(s1) > 2 and {k: v["sha256"] for k, v in s1.items()} == {k: v["sha256"] for k, v in s2.items()}


def test_workers_must_be_positive(tiny_bf16_dir, tmp_path):
    with pytest.raises(Exception, match=r"`workers` must be a positive integer; got 0"):
        hf_to_mcore(tiny_bf16_dir, tmp_path / "m", workers=0, progress=False)
    with pytest.raises(Exception, match=r"`workers` must be a positive integer; got 0"):
        mcore_to_hf(tmp_path / "nope", tmp_path / "h", workers=0)


def test_resume_rehashes_only_changed_files(tiny_bf16_dir, tmp_path, monkeypatch):
    real = h2m.write_rank_file
    calls = []

    def crash(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(h2m, "write_rank_file", crash)
    out = tmp_path / "m"
    with pytest.raises(RuntimeError, match="simulated crash"):
        hf_to_mcore(tiny_bf16_dir, out, pp=2, ep=2, tp=2, progress=False)
    stage = tmp_path / "m.partial"
    recs = {f.name: json.loads(f.read_text()) for f in (stage / ".records").glob("rank_*.json")}
    files = [r["file"] for r in recs.values() if r.get("file")]
    assert len(files) == 4
    touched = stage / "release" / files[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes, new mtime
    corrupt = stage / "release" / files[1]
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF
    corrupt.write_bytes(bytes(data))  # same size, different bytes (and mtime): must be redone
    calls.clear()
    monkeypatch.setattr(h2m, "write_rank_file", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    hf_to_mcore(tiny_bf16_dir, out, pp=2, ep=2, tp=2, progress=False)
    man = json.loads((out / "adnanny_ckpt.json").read_text())
    written = sum(1 for r in man["ranks"].values() if r.get("file"))
    assert man["resume_rehashed_files"] == 2  # only the two files whose stat changed were read again
    assert len(calls) == written - 4 + 1  # the unfinished ranks plus the corrupted one
    assert verify(out, tiny_bf16_dir, values=True)["ok"]


def test_production_code_does_not_import_test_data_and_exits_quietly(tiny_bf16_dir, tmp_path):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", progress=False)
    code = (
        "import sys\n"
        "from adnanny_ckpt import mcore_to_hf, verify, hf_to_mcore\n"
        "import adnanny_ckpt.mcore2hf, adnanny_ckpt.hf2mcore, adnanny_ckpt.checks, adnanny_ckpt.cli\n"
        "from adnanny_ckpt.safetensors_io import HFCheckpointReader\n"
        f"h = mcore_to_hf({str(m)!r}, {str(tmp_path / 'h')!r}, progress=False)\n"
        f"verify(h, forward=True)\n"
        f"r = HFCheckpointReader({str(tiny_bf16_dir)!r}); r.get('model.norm.weight')  # left open at exit\n"
        "assert 'adnanny_ckpt.synthetic' not in sys.modules, 'production code imported the test-data module'\n"
        "print('OK')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr
    assert "Exception ignored" not in res.stderr, res.stderr
