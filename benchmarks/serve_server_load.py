"""The OpenAI-compatible server under a mixed label-only / reasoning load, from a second process on loopback.

The server (``adnanny-serve serve``, its own process) serves the shared fine-tuned fixture
(``adnanny_sft.testing.fine_tuned_fixture()``: a tiny DeepSeek-V3 that answers in the task's tags in both modes),
exported to FP8 by ``adnanny-serve quantize``. This process (the second one) fires ``--requests`` chat
completions built from the fixture's held-out golden query_ad rows with the model's own task prompts: 3 of 4
are label-only (stop at the closing tag, ``max_tokens`` 32), 1 of 4 is label+reasoning (``max_tokens``
``--reasoning-tokens``, ends at EOS); half are greedy, half sampled (temperature 0.7) with a per-request seed —
what adnanny-cook sends. ``--concurrency`` client threads, per-request timeout ``--max-seconds``. Phases, same
model and requests:

* ``unbatched``: ``--batch-size 1``;
* ``static`` (the peer): ``--batching static --batch-size 8`` — batches of requests with equal parameters, seeded
  sampling requests alone, one reasoning request holds its batch until it ends;
* ``continuous``: ``--batching continuous --batch-size 8`` — requests join and leave the running batch per step;
* ``overload``: continuous, 4x the concurrency against a queue of 4 — the server must refuse with 429/503 +
  Retry-After, never fail (zero 5xx) and never leave a request unanswered.

``continuous_no_prefix_cache`` (``--phases``): continuous without the prefix cache at joins;
``continuous_untuned``: continuous as the server ran until session 6, with torch's default threads (every core)
and glibc's default allocator (:mod:`adnanny_serve.runtime` says why both matter). ``--repeats R`` runs
all phases R times, interleaved, and keeps each phase's median-throughput run (every run's rps/p50/p99 under
``runs``). Reports requests/s (answered with 200), p50/p99 latency, and status counts; JSON to
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


def start_server(model: Path, port: int, batch_size: int, max_queue: int, batching: str,
                 extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adnanny_serve.cli", "serve", "--model", str(model), "--port", str(port),
           "--batch-size", str(batch_size), "--max-queue", str(max_queue), "--served-model-name", "tiny",
           "--max-tokens", "1024", "--batching", batching, *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=None if env is None else {**os.environ, **env})
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


def build_requests(model: Path, n: int, reasoning_tokens: int) -> list[dict]:
    """Chat bodies from the fixture's golden rows and its own task definition (see the module docs)."""
    from adnanny_cook.tasks import load_task_from_dir

    task = load_task_from_dir(model, "query_ad")
    golden = [json.loads(line) for line in
              (model.parent / "sample" / "golden" / "query_ad.jsonl").read_text().splitlines() if line]
    out = []
    for i in range(n):
        g = golden[i % len(golden)]
        mode = "reasoning" if i % 4 == 3 else "label"
        body: dict = {"model": "tiny", "messages": task.render_messages(g["input"], mode=mode)}
        if mode == "label":
            body.update(max_tokens=32, stop=list(task.label_stop))
        else:
            body.update(max_tokens=reasoning_tokens)
        if (i + i // 4) % 2:  # half of each mode sampled (i % 2 alone made every reasoning request sampled)
            body.update(temperature=0.7, seed=1000 + i)
        else:
            body.update(temperature=0)
        out.append({"mode": mode, "body": body})
    return out


def phase(name: str, model: Path, port: int, batch_size: int, max_queue: int, conc: int, max_seconds: float,
          requests: list[dict], batching: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict:
    proc = start_server(model, port, batch_size, max_queue, batching, extra, env)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        results = []
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(conc) as ex:
            futs = []
            for r in requests:
                futs.append(ex.submit(post, url, r["body"], max_seconds))
            for f in futs:
                results.append(f.result())
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    n = len(requests)
    codes = [c for c, _, _ in results]
    ok = sorted(lat for c, lat, _ in results if c == 200)
    by_mode = {}
    for mode in ("label", "reasoning"):
        lat = sorted(res[1] for res, r in zip(results, requests) if r["mode"] == mode and res[0] == 200)
        qm = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
        by_mode[mode] = {"ok": len(lat), "p50_s": qm[49], "p99_s": qm[98]}
    counts = {str(c): codes.count(c) for c in sorted(set(codes))}
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    retry_after = sorted({ra for c, _, ra in results if c in (429, 503) and ra})
    slowest = sorted(range(n), key=lambda i: -results[i][1])[:5]
    return {"phase": name, "batching": batching, "server_flags": list(extra), "server_env": env or {},
            "by_mode": by_mode,
            "slowest": [{"request": i, "mode": requests[i]["mode"], "sampled": "seed" in requests[i]["body"],
                         "latency_s": results[i][1], "status": results[i][0]} for i in slowest], "batch_size": batch_size, "max_queue": max_queue, "requests": n, "concurrency": conc,
            "wall_seconds": wall, "rps_ok": len(ok) / wall, "p50_s": q[49], "p99_s": q[98],
            "status_counts": counts, "n_5xx": sum(1 for c in codes if 500 <= c < 600),
            "n_unanswered": codes.count(-1), "n_refused": sum(1 for c in codes if c in (429, 503)),
            "retry_after_values": retry_after}


def per_round(phases: list[dict]) -> list[dict]:
    """Continuous (with and without the prefix cache) vs static within each round: phases of one round ran
    minutes apart at one machine load, while the load of a shared machine moves a phase's rps 2x across rounds, so
    these ratios, not the medians' ratio, are the like-for-like comparison."""
    by = {p["phase"]: p.get("runs", [p]) for p in phases}
    out = []
    for k in range(len(by.get("static", []))):
        st = by["static"][k]
        row: dict = {"round": k + 1, "static_rps": st["rps_ok"], "static_p99_s": st["p99_s"]}
        for name in ("continuous", "continuous_no_prefix_cache", "continuous_untuned"):
            if name in by and k < len(by[name]):
                c = by[name][k]
                row[f"{name}_vs_static_rps"] = c["rps_ok"] / st["rps_ok"] if st["rps_ok"] else None
                row[f"{name}_p99_s"] = c["p99_s"]
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="per-request timeout")
    ap.add_argument("--reasoning-tokens", type=int, default=256)
    ap.add_argument("--fixture-dir", type=Path, help="an exported fixture model dir (default: fine_tuned_fixture())")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_server_load.json")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of all phases, interleaved (median kept)")
    ap.add_argument("--phases", default="unbatched,static,continuous,overload",
                    help="comma list of unbatched, static, continuous, continuous_no_prefix_cache, "
                         "continuous_untuned, overload")
    ap.add_argument("--server-threads", type=int, default=0,
                    help="the servers' --threads (0: their default, all cores but one)")
    args = ap.parse_args()

    from adnanny_sft.testing import fine_tuned_fixture

    from adnanny_serve.quantize import quantize_checkpoint
    from adnanny_serve.server.run import free_port

    load0 = os.getloadavg()
    model = args.fixture_dir or Path(fine_tuned_fixture())
    requests = build_requests(model, args.requests, args.reasoning_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        fp8 = Path(tmp) / "fp8"
        quantize_checkpoint(model, fp8)
        port = free_port()
        c, mx = args.concurrency, args.max_seconds
        th = ("--threads", str(args.server_threads))
        # the server as it ran until session 6: torch's default threads (every core) and glibc's default allocator
        untuned = (("--threads", str(os.cpu_count() or 1)), {"ADNANNY_SERVE_MALLOC": "default"})
        specs = {
            "unbatched": (1, 256, c, "static", th, None),
            "static": (8, 256, c, "static", th, None),
            "continuous": (8, 256, c, "continuous", th, None),
            # the continuous batcher as it was before its joins used the prefix cache (every prompt prefilled whole)
            "continuous_no_prefix_cache": (8, 256, c, "continuous", (*th, "--no-prefix-caching"), None),
            "continuous_untuned": (8, 256, c, "continuous", *untuned),
            "overload": (8, 4, 4 * c, "continuous", th, None),
        }
        wanted = [x for x in args.phases.split(",") if x]
        unknown = [x for x in wanted if x not in specs]
        if unknown:
            raise SystemExit(f"--phases: unknown {unknown}; choose from {list(specs)}")
        runs: dict[str, list[dict]] = {}
        for _ in range(args.repeats):  # interleaved rounds on a shared machine; the median-throughput run is kept
            for name in wanted:
                b, q, cc, batching, extra, env = specs[name]
                runs.setdefault(name, []).append(phase(name, fp8, port, b, q, cc, mx, requests, batching, extra,
                                                       env))
        phases = []
        for name in wanted:
            rs = sorted(runs[name], key=lambda r: r["rps_ok"])
            phases.append(dict(rs[(len(rs) - 1) // 2], runs=[{k: r[k] for k in ("rps_ok", "p50_s", "p99_s")}
                                                             for r in runs[name]]))
    print(f"{'phase':10s} {'batch':>5s} {'queue':>5s} {'conc':>4s} {'rps':>7s} {'p50 s':>7s} {'p99 s':>7s} "
          f"{'5xx':>4s} {'refused':>7s} {'unanswered':>10s}")
    for p in phases:
        print(f"{p['phase']:10s} {p['batch_size']:5d} {p['max_queue']:5d} {p['concurrency']:4d} {p['rps_ok']:7.2f} "
              f"{p['p50_s']:7.3f} {p['p99_s']:7.3f} {p['n_5xx']:4d} {p['n_refused']:7d} {p['n_unanswered']:10d}")
    by = {p["phase"]: p for p in phases}

    def ratio(a: str, b: str) -> float:
        return by[a]["rps_ok"] / by[b]["rps_ok"] if a in by and b in by and by[b]["rps_ok"] else float("nan")

    speed, cont = ratio("static", "unbatched"), ratio("continuous", "static")
    rounds = per_round(phases)
    if "continuous" in by and "static" in by:
        print(f"static vs unbatched: {speed:.2f}x requests/s; continuous vs static: {cont:.2f}x requests/s, p99 "
              f"{by['continuous']['p99_s']:.2f} vs {by['static']['p99_s']:.2f} s")
    out = {"benchmark": "serve_server_load",
           "model": f"adnanny-sft fine-tuned fixture {model.parent.name} (tiny DeepSeek-V3, hidden 64), FP8 export",
           "load": "3/4 label-only (stop at closing tag, 32 tokens), 1/4 label+reasoning "
                   f"({args.reasoning_tokens} tokens); half greedy, half temperature 0.7 with per-request seeds",
           "phases": phases, "static_vs_unbatched_rps": speed, "continuous_vs_static_rps": cont,
           "per_round": rounds,
           "continuous_vs_static_p99": (by["continuous"]["p99_s"] / by["static"]["p99_s"]
                                        if "continuous" in by and "static" in by else None),
           "goal": "continuous >= 1.5x static throughput at a lower p99; zero 5xx under overload",
           "all_answered_or_refused": all(p["n_unanswered"] == 0 and p["n_5xx"] == 0 for p in phases),
           "server_threads": args.server_threads or "default (all cores but one)",
           "command": " ".join(["python", "benchmarks/serve_server_load.py", *sys.argv[1:]]),
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out, indent=1))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
