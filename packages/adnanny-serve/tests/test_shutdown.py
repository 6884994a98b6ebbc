"""`adnanny-serve serve` exits within seconds of SIGTERM, even with a long request running and others queued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from adnanny_serve.server.run import free_port

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _post(url: str, body: dict, out: list) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            out.append(r.status)
    except urllib.error.HTTPError as e:
        out.append(e.code)
    except Exception as e:  # connection closed by the server going away
        out.append(type(e).__name__)


@pytest.mark.slow
def test_sigterm_exits_within_seconds_with_work_running(tiny_fp8) -> None:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "adnanny_serve.cli", "serve", "--model", str(tiny_fp8), "--port",
                             str(port), "--batch-size", "1", "--max-tokens", "100000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).read()
                break
            except Exception:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        # one request that would run for minutes (no stop string, huge budget) and two queued behind it
        body = {"model": tiny_fp8.name, "prompt": "buy red wine", "max_tokens": 100000, "temperature": 0}
        results: list = []
        threads = [threading.Thread(target=_post, args=(f"{base}/v1/completions", body, results)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        m = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert "adnanny_serve_running_prompts 1" in m, m
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        took = time.time() - t0
        for t in threads:
            t.join(timeout=30)
        assert took < 10, f"SIGTERM took {took:.1f}s"
        assert len(results) == 3 and 200 not in results, results  # none ran to its 100000 tokens
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
