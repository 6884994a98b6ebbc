"""Filter throughput (candidates/s on this machine) and the cached re-run time of a finished cooking job.

Filters: the per-chunk filter stages of adnanny-cook (strict parse, contradiction, boilerplate, self-consistency
on embeddings, MMR) on realistic candidates (the scripted teacher's outputs, ~30% of inputs with one bad
candidate), with all-MiniLM-L6-v2 and with the hashing embedder. Baseline, side by side: the strict parse alone
(the cheapest possible "filter"), to show what the embedding stages cost.

Cached re-run: cook N inputs x k candidates against the stub teacher, then (a) rerun the finished job
(chunk files present) and (b) delete the chunk files and rerun from the response cache; both must make zero
calls (goal: seconds). Writes benchmarks/results/cook_filters.json with os.getloadavg() (shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages/adnanny-cook/tests"))


def make_candidates(sample: Path, n_inputs: int, k: int):
    import polars as pl
    from stub_teacher import StubTeacher

    from adnanny_cook.filters import Candidate
    from adnanny_cook.tasks import get_task

    t = get_task("query_ad")
    stub = StubTeacher(k=k, bad_rate=0.3)
    rows = pl.read_parquet(sample / "query_ad.parquet").head(n_inputs).to_dicts()
    out = []
    for r in rows:
        inp = {f: r[f] for f in t.input_fields}
        labels = {f: r[f] for f in t.label_fields}
        for j in range(k):
            msgs = t.reasoning_messages(inp, labels, variant=j % len(t.reasoning_variants))
            text, _kind = stub.respond({"messages": msgs, "seed": j})
            out.append((inp, Candidate(r["id"], 0, j, "v", text, "", labels)))
    return out


def run_filters(cands, embedder, parse_only: bool = False) -> float:
    from adnanny_cook.filters import (boilerplate_reason, contradiction_reason, mmr_select, schema_parse,
                                      self_consistency)
    from adnanny_cook.tasks import get_task

    t = get_task("query_ad")
    fresh = [(inp, type(c)(c.item_id, c.sub, c.idx, c.variant, c.text, c.key, dict(c.labels))) for inp, c in cands]
    t0 = time.perf_counter()
    for inp, c in fresh:
        c.drop = schema_parse(t, c)
        if parse_only or c.drop:
            continue
        c.drop = contradiction_reason(t, c) or boilerplate_reason(c, inp, 3, 12)
    if not parse_only:
        alive = [c for _i, c in fresh if not c.drop]
        emb = embedder.encode([c.reasoning for c in alive])
        groups: dict[str, list[int]] = {}
        for n, c in enumerate(alive):
            groups.setdefault(c.item_id, []).append(n)
        memory = None
        for idx in groups.values():
            g = [alive[i] for i in idx]
            rs = self_consistency(g, emb[idx], 0.6)
            surv = [i for i, r in zip(idx, rs, strict=True) if r is None]
            if surv:
                ch = mmr_select([alive[i] for i in surv], emb[surv], memory, 0.7, 1)
                memory = emb[[surv[c] for c in ch]]
    return len(fresh) / (time.perf_counter() - t0)


def cached_rerun(sample: Path, tmp: Path, n_inputs: int, k: int) -> dict:
    from stub_teacher import StubTeacher

    from adnanny_cook.config import load_config
    from adnanny_cook.pipeline import run_cook

    with StubTeacher(k=k, bad_rate=0.3) as s:
        cfg = load_config(None, {"task": "query_ad", "input": str(sample / "query_ad.parquet"),
                                 "out": str(tmp / "job"), "base_url": s.base_url, "model": "bench",
                                 "limit": n_inputs, "k": k, "embed_model": "hashing", "progress": False})
        t0 = time.perf_counter()
        m1 = run_cook(cfg)
        first = time.perf_counter() - t0
        calls = sum(s.successes.values())
        t0 = time.perf_counter()
        m2 = run_cook(cfg)
        finished = time.perf_counter() - t0
        shutil.rmtree(tmp / "job/.work")
        t0 = time.perf_counter()
        m3 = run_cook(cfg)
        from_cache = time.perf_counter() - t0
        assert sum(s.successes.values()) == calls
    return {"inputs": n_inputs, "k": k, "first_run_s": round(first, 2), "first_run_calls": calls,
            "rerun_finished_job_s": round(finished, 2), "rerun_finished_job_calls": m2["stats"]["teacher"]["calls"],
            "rerun_from_cache_s": round(from_cache, 2), "rerun_from_cache_calls": m3["stats"]["teacher"]["calls"],
            "rows": m1["rows"], "same_rows": m1["rows"] == m2["rows"] == m3["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=500)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rerun-inputs", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cook_filters.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adnanny_cook.embed import Embedder
    from adnanny_cook.sample import make_sample

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        make_sample(tmp / "world", seed=0, tokenizer=False)
        load0 = os.getloadavg()
        cands = make_candidates(tmp / "world", a.inputs, a.k)
        minilm = Embedder("minilm")
        minilm.encode(["warm up"])
        res_parse = run_filters(cands, None, parse_only=True)
        res_hash = run_filters(cands, Embedder("hashing"))
        res_minilm = run_filters(cands, minilm)
        rerun = cached_rerun(tmp / "world", tmp, a.rerun_inputs, a.k)
        load1 = os.getloadavg()
    res = {"benchmark": "cook_filters", "candidates": len(cands),
           "baseline_parse_only_cps": round(res_parse, 1), "filters_hashing_cps": round(res_hash, 1),
           "filters_minilm_cps": round(res_minilm, 1), "cached_rerun": rerun,
           "loadavg_before": load0, "loadavg_after": load1, "cpus": os.cpu_count(),
           "note": "shared 2-core dev machine: absolute numbers are noisy"}
    print(f"{'filter stage set':<40}{'candidates/s':>14}")
    print(f"{'baseline: strict parse only':<40}{res_parse:>14.1f}")
    print(f"{'all filters, hashing embedder':<40}{res_hash:>14.1f}")
    print(f"{'all filters, all-MiniLM-L6-v2 (CPU)':<40}{res_minilm:>14.1f}")
    print(f"cached rerun of {rerun['inputs']} inputs x k={rerun['k']}: first run {rerun['first_run_s']} s "
          f"({rerun['first_run_calls']} calls); finished job {rerun['rerun_finished_job_s']} s "
          f"({rerun['rerun_finished_job_calls']} calls); from cache {rerun['rerun_from_cache_s']} s "
          f"({rerun['rerun_from_cache_calls']} calls)")
    print(f"loadavg before {load0}, after {load1}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
