"""The reward service: a round trip from a separate process, and 4xx that name the field."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from adnanny_cook.tasks import get_task
from adnanny_rl.rewards.labels import LabelReward


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_reward_service_round_trip(tmp_path: Path, sample_dir: Path) -> None:
    cfg = tmp_path / "rl.toml"
    cfg.write_text(f'policy = "unused"\noutput_dir = "{tmp_path / "out"}"\n[[tasks]]\ntask = "query_ad"\n'
                   f'data = "{sample_dir / "corpus"}"\nmode = "label"\n')
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "adnanny_rl.cli", "serve-rewards", "--config", str(cfg),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                with urllib.request.urlopen(base + "/v1/tasks", timeout=1) as r:
                    assert "query_ad" in json.loads(r.read())["tasks"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                time.sleep(0.1)
        rows = [{"query": "q", "ad_title": "t", "labels": {"label": "fair", "location_label": "good",
                                                             "quality_label": "good"}}] * 2
        comps = ["<Label>Fair</Label><LocationLabel>Good</LocationLabel><AdQuality>Bad</AdQuality>", "nope"]
        code, body = _post(base + "/v1/rewards", {"task": "query_ad", "rows": rows, "completions": comps,
                                                  "group_size": 2})
        assert code == 200
        want = LabelReward(get_task("query_ad"), mode="label")(rows, comps, group_size=2)
        assert body["rewards"] == want.total and body["components"] == want.components
        code, body = _post(base + "/v1/rewards", {"task": "query_ad", "rows": rows, "completion": comps})
        assert code == 422 and any("completions" in d["loc"] for d in body["detail"])
        code, body = _post(base + "/v1/rewards", {"task": "ad_user", "rows": rows, "completions": comps})
        assert code == 404 and "`task`" in body["detail"]
        code, body = _post(base + "/v1/rewards", {"task": "query_ad", "rows": rows, "completions": comps[:1]})
        assert code == 422 and "one length" in json.dumps(body)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
