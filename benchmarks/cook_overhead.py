"""Client-side overhead of adnanny-cook vs a bare AsyncOpenAI + asyncio.gather loop (goal: >= 0.9 of bare).

Both hit the same local zero-latency OpenAI-compatible endpoint (the scripted stub teacher from the package's
tests, run in its own process) with the same N distinct reasoning prompts at the same concurrency:

* bare:     openai.AsyncOpenAI(...).chat.completions.create under a semaphore, results gathered;
* client:   adnanny_cook.TeacherClient (fresh SQLite cache, RPM/TPM limiter active but not binding, retries)
            + the task's strict parser on every output (the "cache, limiter, parsing" path);
* pipeline: the whole `run_cook` (chunks, filters with the hashing embedder, MMR, corpus + card) on N/k inputs x k
            candidates, reported as teacher requests/s end to end.

Rounds alternate bare/client (paired, short rounds) so both share the machine's noise; the headline is the
median of the per-round ratios. Prints a table, writes
benchmarks/results/cook_overhead.json (with os.getloadavg(): the dev machine is shared, so absolute numbers are
noisy; the ratio is the metric).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "packages/adnanny-cook/tests/stub_teacher.py"


def start_stub(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    portfile = tmp / "port"
    proc = subprocess.Popen([sys.executable, str(STUB), str(portfile), json.dumps({"bad_rate": 0.0})],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not portfile.exists() or not portfile.read_text():
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("stub teacher did not start")
        time.sleep(0.05)
    time.sleep(0.2)
    return proc, f"http://127.0.0.1:{portfile.read_text()}/v1"


def prompts(sample: Path, n: int, salt: str) -> list[list[dict[str, str]]]:
    import polars as pl

    from adnanny_cook.tasks import get_task

    t = get_task("query_ad")
    rows = pl.read_parquet(sample / "query_ad.parquet").to_dicts()
    out = []
    for i in range(n):
        r = rows[i % len(rows)]
        row = {f: r[f] for f in t.input_fields}
        row["query"] = f"{row['query']} {salt}{i}"   # distinct requests, no single-flight sharing
        out.append(t.reasoning_messages(row, {k: r[k] for k in t.label_fields}))
    return out


async def bare(base_url: str, msgs: list, conc: int) -> float:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=60)
    sem = asyncio.Semaphore(conc)

    async def one(m: list) -> str:
        async with sem:
            r = await client.chat.completions.create(model="bench", messages=m, temperature=0.7, max_tokens=512)
            return r.choices[0].message.content or ""

    t0 = time.perf_counter()
    res = await asyncio.gather(*(one(m) for m in msgs))
    dt = time.perf_counter() - t0
    await client.close()
    assert len(res) == len(msgs)
    return len(msgs) / dt


async def cook_client(base_url: str, msgs: list, conc: int, cache: Path) -> float:
    from adnanny_cook.client import TeacherClient
    from adnanny_cook.tasks import get_task

    t = get_task("query_ad")
    c = TeacherClient(base_url=base_url, model="bench", concurrency=conc, cache_path=str(cache),
                      rpm=10_000_000, tpm=10_000_000_000)

    async def one(m: list) -> dict:
        r = await c.complete(m, params={"temperature": 0.7, "max_tokens": 512})
        return t.parse(r.text, mode="reasoning").labels

    t0 = time.perf_counter()
    async with c:
        res = await asyncio.gather(*(one(m) for m in msgs))
    dt = time.perf_counter() - t0
    assert len(res) == len(msgs) and c.stats.calls == len(msgs)
    return len(msgs) / dt


def pipeline(base_url: str, sample: Path, n_inputs: int, k: int, conc: int, out: Path) -> tuple[float, dict]:
    from adnanny_cook.config import load_config
    from adnanny_cook.pipeline import run_cook

    cfg = load_config(None, {"task": "query_ad", "input": str(sample / "query_ad.parquet"), "out": str(out),
                             "base_url": base_url, "model": "bench", "limit": n_inputs, "k": k,
                             "concurrency": conc, "embed_model": "hashing", "progress": False,
                             "chunk_size": 256})
    t0 = time.perf_counter()
    m = run_cook(cfg)
    dt = time.perf_counter() - t0
    return m["stats"]["teacher"]["ok"] / dt, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="requests per measurement")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cook_overhead.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adnanny_cook.sample import make_sample

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        make_sample(tmp / "world", seed=0, tokenizer=False)
        proc, url = start_stub(tmp)
        try:
            load_before = os.getloadavg()
            bare_r, cook_r = [], []
            for r in range(a.rounds):
                # alternate which goes first in each round
                order = ("bare", "cook") if r % 2 == 0 else ("cook", "bare")
                for which in order:
                    msgs = prompts(tmp / "world", a.n, f"{which}{r}-")
                    if which == "bare":
                        bare_r.append(asyncio.run(bare(url, msgs, a.concurrency)))
                    else:
                        cook_r.append(asyncio.run(cook_client(url, msgs, a.concurrency,
                                                              tmp / f"cache{r}.sqlite")))
            k = 4
            n_pipe = 4 * a.n
            bare_a = asyncio.run(bare(url, prompts(tmp / "world", n_pipe, "pipebaseA-"), a.concurrency))
            pipe_rps, m = pipeline(url, tmp / "world", n_pipe // k, k, a.concurrency, tmp / "pipe")
            bare_b = asyncio.run(bare(url, prompts(tmp / "world", n_pipe, "pipebaseB-"), a.concurrency))
            bare_pipe = (bare_a + bare_b) / 2   # bare measured right before and right after the pipeline
            load_after = os.getloadavg()
        finally:
            proc.terminate()
            proc.wait(10)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    res = {
        "benchmark": "cook_overhead", "n_requests": a.n, "concurrency": a.concurrency, "rounds": a.rounds,
        "bare_rps": [round(x, 1) for x in bare_r], "client_rps": [round(x, 1) for x in cook_r],
        "bare_rps_median": round(med(bare_r), 1), "client_rps_median": round(med(cook_r), 1),
        "client_vs_bare_per_round": [round(c / b, 3) for c, b in zip(cook_r, bare_r, strict=True)],
        "client_vs_bare": round(med([c / b for c, b in zip(cook_r, bare_r, strict=True)]), 3),
        "pipeline_rps": round(pipe_rps, 1), "bare_rps_next_to_pipeline": round(bare_pipe, 1),
        "pipeline_vs_bare": round(pipe_rps / bare_pipe, 3), "pipeline_rows": m["rows"],
        "goal": ">= 0.9 of bare", "loadavg_before": load_before, "loadavg_after": load_after,
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "note": "shared 2-core dev machine; endpoint (separate process) and client compete for the same cores",
    }
    print(f"{'variant':<34}{'requests/s':>12}{'vs bare':>10}")
    print(f"{'bare AsyncOpenAI + gather':<34}{res['bare_rps_median']:>12.1f}{1.0:>10.3f}")
    print(f"{'TeacherClient (cache+limiter+parse)':<34}{res['client_rps_median']:>12.1f}{res['client_vs_bare']:>10.3f}")
    print(f"{'run_cook end to end (k=4)':<34}{res['pipeline_rps']:>12.1f}{res['pipeline_vs_bare']:>10.3f}")
    print(f"loadavg before {load_before}, after {load_after}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
