"""`--executor ray`: the retry/streaming policy (fast, no cluster), and real Ray clusters (slow): a local one, and
one started with `ray start` that the run joins through `RAY_ADDRESS`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as cf_wait
from pathlib import Path

import pytest
from adnanny_serve.errors import EngineError, LabelError
from adnanny_serve.ray_executor import actor_resources, run_with_retries

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::ResourceWarning",
                                        "ignore::DeprecationWarning")


def _chunks(n: int, size: int = 3):
    return [(k, [{"id": f"r{k * size + i}"} for i in range(size)]) for k in range(n)]


def _pool_runner(fn, pool):
    def submit(k, chunk, attempt):
        return pool.submit(fn, k, chunk, attempt)

    def wait(futs):
        done, _ = cf_wait(futs, return_when=FIRST_COMPLETED)
        return [(f, None if f.exception() else f.result(), f.exception()) for f in done]

    return submit, wait


def test_failed_chunk_is_retried_then_named() -> None:
    calls: list[tuple[int, int]] = []
    live, peak, lock = [0], [0], threading.Lock()

    def work(k, chunk, attempt):
        with lock:
            calls.append((k, attempt))
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.01)
        with lock:
            live[0] -= 1
        if k == 1 and attempt == 0:  # a transient failure: the retry succeeds
            raise RuntimeError("actor died")
        return len(chunk)

    failures = []
    with ThreadPoolExecutor(8) as pool:
        submit, wait = _pool_runner(work, pool)
        done = run_with_retries(_chunks(6), submit, wait, limit=2, retries=2,
                                on_failure=lambda h, e: failures.append(str(e)), chunk_size=3)
    assert done == 18 and sorted(k for k, a in calls if a == 0) == list(range(6))
    assert (1, 1) in calls and failures == ["actor died"] and peak[0] <= 2  # bounded in flight: streamed

    def broken(k, chunk, attempt):
        if k == 2:
            raise ValueError("boom: bad row")
        return len(chunk)

    with ThreadPoolExecutor(4) as pool, pytest.raises(
            LabelError, match=r"chunk 2 \(rows 6-8, ids 'r6'..'r8'\) failed 3 times; last error: ValueError: boom: "
                              r"bad row\. Finished chunks are kept"):
        submit, wait = _pool_runner(broken, pool)
        run_with_retries(_chunks(4), submit, wait, limit=2, retries=2, chunk_size=3)


def test_actor_resources_follow_device() -> None:
    assert actor_resources("cpu") == {"num_cpus": 1, "num_gpus": 0}
    assert actor_resources("cuda") == actor_resources("cuda:1") == {"num_cpus": 1, "num_gpus": 1}


def _cfg(tiny_fp8, inp, out, **kw):
    from adnanny_serve.label import LabelConfig

    return LabelConfig(model=str(tiny_fp8), task="query_ad", input=str(inp), out=str(out), chunk_size=3,
                       max_tokens=6, progress=False, num_workers=2, **kw)


@pytest.mark.slow
def test_ray_executor_labels_every_row_once_and_resumes(tiny_fp8, query_ad_rows, tmp_path, monkeypatch) -> None:
    import polars as pl
    from adnanny_serve.label import label_file, plan

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    inp = tmp_path / "in.parquet"
    query_ad_rows.head(10).select("id", "query", "ad_title", "ad_description", "ad_url").write_parquet(inp)
    out = tmp_path / "ray.parquet"
    # a previous (killed) local run finished chunk 0; Ray must do chunks 1..3 only
    local_out = tmp_path / "local.parquet"
    label_file(_cfg(tiny_fp8, inp, local_out))
    parts = out.with_name(out.name + ".parts")
    from adnanny_serve.label import start

    start(plan(_cfg(tiny_fp8, inp, out, executor="ray")))  # writes state.json like a started run
    pl.read_parquet(local_out).head(3).write_parquet(parts / "chunk-000000.parquet")
    stats = label_file(_cfg(tiny_fp8, inp, out, executor="ray"))
    assert stats.chunks_skipped == 1 and stats.rows_done_now == 7 and stats.rows == 10
    df = pl.read_parquet(out)
    assert df["id"].to_list() == pl.read_parquet(inp)["id"].to_list()
    # greedy decoding: the Ray workers produce exactly what the local run produced
    assert df.drop("label_probs").equals(pl.read_parquet(local_out).drop("label_probs"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_joins_a_running_cluster_through_ray_address(tiny_fp8, query_ad_rows, tmp_path, monkeypatch) -> None:
    """A cluster started by `ray start --head` (its own process group, stopped by its PID at the end): the run
    connects without resource arguments, labels every row once, and refuses GPU actors the cluster cannot host."""
    import polars as pl
    import ray
    from adnanny_serve.label import label_file

    if ray.is_initialized():
        ray.shutdown()
    # a throwaway cluster on this host: no token auth (the driver and the head must agree on the mode)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = _free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's unix sockets need a short path
    log = tmp_path / "head.log"
    with log.open("w") as fh:
        head = subprocess.Popen([str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}"],
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    try:
        deadline = time.time() + 180
        while True:  # the head prints the address to join once it is up
            m = re.search(r"ray start --address='([^']+)'", log.read_text())
            if m:
                break
            assert time.time() < deadline and head.poll() is None, log.read_text()[-1500:]
            time.sleep(1)
        monkeypatch.setenv("RAY_ADDRESS", m.group(1))
        inp = tmp_path / "in.parquet"
        query_ad_rows.head(7).select("id", "query", "ad_title", "ad_description", "ad_url").write_parquet(inp)
        stats = label_file(_cfg(tiny_fp8, inp, tmp_path / "r.parquet", executor="ray"))
        assert stats.rows == 7 and stats.rows_done_now == 7
        assert pl.read_parquet(tmp_path / "r.parquet")["id"].to_list() == pl.read_parquet(inp)["id"].to_list()
        with pytest.raises(EngineError, match=r"`device` 'cuda' asks 1 GPU per worker x 2 workers but the Ray cluster "
                                              r"has 0 GPUs"):
            label_file(_cfg(tiny_fp8, inp, tmp_path / "g.parquet", executor="ray", device="cuda"))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)  # the process group this test started, nothing else
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
