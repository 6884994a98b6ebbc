"""The cook progress bar moves per finished teacher call (not per checkpointed chunk) and shows retries and calls
waiting on a busy server."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.client import TeacherStats  # noqa: E402
from adnanny_cook.config import load_config  # noqa: E402
from adnanny_cook.pipeline import run_cook  # noqa: E402
from adnanny_cook.progress import CookProgress  # noqa: E402


def test_bar_counts_calls_and_shows_retries_and_waiting() -> None:
    client = SimpleNamespace(stats=TeacherStats())
    out = io.StringIO()
    bar = CookProgress(inputs_total=4, inputs_done=0, calls_per_input=2, clients=[client, None], desc="cook t",
                       file=out, mininterval=0)
    assert bar.bar.total == 8
    for _ in range(3):
        bar.on_event("done")
    assert bar.bar.n == 3
    client.stats.retries, client.stats.waiting = 2, 1
    bar.on_event("retry")
    bar.on_event("slow")
    assert "3/8" in out.getvalue() and "retries=2" in out.getvalue() and "waiting=1" in out.getvalue()
    bar.on_event("cached")
    bar.chunk_done(2, kept=2, dropped=1)               # 4 calls for 2 inputs: 2 left -> 4 more expected
    assert bar.bar.total == 8 and "inputs=2/4" in out.getvalue()
    for ev in ("done", "failed", "done"):
        bar.on_event(ev)
    bar.chunk_done(2)
    bar.close()
    assert bar.bar.n == bar.bar.total == 7 and "7/7" in out.getvalue()


def test_cook_run_bar_moves_within_a_chunk(tmp_path: Path, sample_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # one chunk of 4 inputs x k=2 against a server computing one request at a time: the chunk-level bar of old
    # showed 0/4 until the end; this one moves call by call and shows the 429 retries
    with StubTeacher(k=2, bad_rate=0.0, slots=1, latency_s=0.08, p429=0.3, retry_after="0.01") as s:
        cfg = load_config(None, {"task": "query_ad", "input": str(sample_dir / "query_ad.parquet"),
                                 "out": str(tmp_path / "o"), "base_url": s.base_url, "model": "teacher", "k": 2,
                                 "limit": 4, "chunk_size": 4, "embed_model": "hashing", "progress": True,
                                 "backoff_base_s": 0.01, "backoff_max_s": 0.02, "timeout_s": 5.0})
        m = run_cook(cfg)
    err = capsys.readouterr().err
    counts = [int(n) for n in re.findall(r"\| *(\d+)/\d+ \[", err)]
    assert len(set(counts)) >= 4 and max(counts) == 8, err[-800:]   # several refreshes inside the one chunk
    retries = m["stats"]["teacher"]["retries"]
    assert retries == s.status[429] > 0 and f"retries={retries}" in err
