"""SmolLM2-135M-Instruct as a real teacher, served by adnanny-serve's OpenAI-compatible server. Slow: `-m slow`.

A 135M model mostly cannot follow the cooking format; the point is the real end-to-end path (HTTP, the SDK,
parsing of real generations, every candidate accounted for by a filter or kept), not the quality of its traces.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from adnanny_cook.config import load_config
from adnanny_cook.corpus import read_corpus
from adnanny_cook.pipeline import run_cook

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the test process dies (e.g. killed by a CI timeout)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def test_smollm2_teacher_cooks_a_small_sample_end_to_end(tmp_path: Path, sample_dir: Path) -> None:
    gguf = pytest.importorskip("adnanny_ckpt.gguf")
    pytest.importorskip("adnanny_serve")
    model_dir = gguf.smollm2_hf_dir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "adnanny_serve.cli", "serve", "--model", str(model_dir),
                             "--served-model-name", "smollm2", "--port", str(port), "--max-tokens", "256",
                             "--batch-size", "4"], stdout=log, stderr=log,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, preexec_fn=_die_with_parent)
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                assert time.time() < deadline, "adnanny-serve did not come up"
                time.sleep(1)
        golden = sample_dir / "golden/query_ad.jsonl"
        small = tmp_path / "in.jsonl"
        small.write_text("".join(golden.read_text().splitlines(keepends=True)[:2]))
        cfg = load_config(None, {"task": "query_ad", "input": str(small), "out": str(tmp_path / "out"),
                                 "base_url": f"http://127.0.0.1:{port}/v1", "model": "smollm2", "k": 2,
                                 "max_tokens": 96, "temperature": 0.7, "embed_model": "hashing",
                                 "progress": False, "timeout_s": 1200, "max_retries": 0, "concurrency": 4})
        m = run_cook(cfg)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    t = m["stats"]["teacher"]
    assert t["ok"] == 4 and t["completion_tokens"] > 0
    kept = m["rows"] - (m["rows"] // 2 if m["rows"] else 0)
    dropped = sum(v for k, v in m["filters"]["dropped"].items())
    assert kept + dropped == 4       # every real generation is either kept or dropped with a reason
    lines = [json.loads(x) for x in (tmp_path / "out/dropped.jsonl").read_text().splitlines()]
    assert all(x["text"] for x in lines if x["reason"] == "schema")
    read_corpus(tmp_path / "out")
