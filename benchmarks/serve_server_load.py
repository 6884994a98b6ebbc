"""The OpenAI-compatible server under load, from a second process on loopback.

The server (``adnanny-serve serve``, its own process) serves a tiny DeepSeek-V3 exported to FP8 (random
weights, the sample world's tokenizer). This process fires ``--requests`` chat completions (``max_tokens``
16, greedy) from ``--concurrency`` client threads, bounded by ``--max-seconds``, and records per-request
status and latency. Three phases, same model and requests:

* ``unbatched`` (baseline): ``--batch-size 1`` — one request per engine call;
* ``batched``: ``--batch-size 8`` — the batcher groups concurrent requests;
* ``overload``: 4x the concurrency against a queue of 4 — the server must refuse with 429/503 +
  Retry-After, never fail (zero 5xx) and never leave a request unanswered.

Reports requests/s (answered with 200), p50/p99 latency, and status counts; JSON to
benchmarks/results/serve_server_load.json. The machine is shared: os.getloadavg() is recorded.

    python benchmarks/serve_server_load.py [--requests 64] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"


def post(url: str, body: dict, timeout: float) -> tuple[int, float, str | None]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - t0, None
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - t0, e.headers.get("Retry-After")
    except Exception as e:  # connection refused/reset, timeout: an unanswered request
        return -1, time.perf_counter() - t0, type(e).__name__


def start_server(model: Path, port: int, batch_size: int, max_queue: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adnanny_serve.cli", "serve", "--model", str(model), "--port", str(port),
           "--batch-size", str(batch_size), "--max-queue", str(max_queue), "--served-model-name", "tiny",
           "--max-tokens", "64"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except Exception:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
    proc.kill()
    raise RuntimeError("server did not come up in 180 s")


def phase(name: str, model: Path, port: int, batch_size: int, max_queue: int, n: int, conc: int,
          max_seconds: float) -> dict:
    proc = start_server(model, port, batch_size, max_queue)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        results = []
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(conc) as ex:
            futs = []
            for i in range(n):
                body = {"model": "tiny", "max_tokens": 16, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Query: red wine {i}. Is the ad relevant?"}]}
                futs.append(ex.submit(post, url, body, max_seconds))
            for f in futs:
                results.append(f.result())
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    codes = [c for c, _, _ in results]
    ok = sorted(lat for c, lat, _ in results if c == 200)
    counts = {str(c): codes.count(c) for c in sorted(set(codes))}
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    retry_after = sorted({ra for c, _, ra in results if c in (429, 503) and ra})
    return {"phase": name, "batch_size": batch_size, "max_queue": max_queue, "requests": n, "concurrency": conc,
            "wall_seconds": wall, "rps_ok": len(ok) / wall, "p50_s": q[49], "p99_s": q[98],
            "status_counts": counts, "n_5xx": sum(1 for c in codes if 500 <= c < 600),
            "n_unanswered": codes.count(-1), "n_refused": sum(1 for c in codes if c in (429, 503)),
            "retry_after_values": retry_after}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per-request timeout")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_server_load.json")
    args = ap.parse_args()

    from adnanny_cook.sample import make_sample

    from adnanny_serve.quantize import quantize_checkpoint
    from adnanny_serve.server.run import free_port
    from adnanny_serve.tiny import build_tiny_deepseek

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        make_sample(t / "sample", seed=0)
        build_tiny_deepseek(t / "bf16", t / "sample" / "tokenizer")
        quantize_checkpoint(t / "bf16", t / "fp8")
        port = free_port()
        phases = [
            phase("unbatched", t / "fp8", port, 1, 256, args.requests, args.concurrency, args.max_seconds),
            phase("batched", t / "fp8", port, 8, 256, args.requests, args.concurrency, args.max_seconds),
            phase("overload", t / "fp8", port, 8, 4, args.requests, 4 * args.concurrency, args.max_seconds),
        ]
    print(f"{'phase':10s} {'batch':>5s} {'queue':>5s} {'conc':>4s} {'rps':>7s} {'p50 s':>7s} {'p99 s':>7s} "
          f"{'5xx':>4s} {'refused':>7s} {'unanswered':>10s}")
    for p in phases:
        print(f"{p['phase']:10s} {p['batch_size']:5d} {p['max_queue']:5d} {p['concurrency']:4d} {p['rps_ok']:7.2f} "
              f"{p['p50_s']:7.3f} {p['p99_s']:7.3f} {p['n_5xx']:4d} {p['n_refused']:7d} {p['n_unanswered']:10d}")
    speed = phases[1]["rps_ok"] / phases[0]["rps_ok"] if phases[0]["rps_ok"] else float("nan")
    print(f"batched vs unbatched: {speed:.2f}x requests/s")
    out = {"benchmark": "serve_server_load", "model": "tiny DeepSeek-V3 (hidden 128) FP8, random weights",
           "phases": phases, "batched_vs_unbatched_rps": speed,
           "all_answered_or_refused": all(p["n_unanswered"] == 0 and p["n_5xx"] == 0 for p in phases),
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out, indent=1))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
