"""Ablation of the adaptive weights of paper §4.2 on a skewed multi-task mix (cook sample data, tiny DeepSeek-V3).

Mix: every query_ad training row plus ad_user rows subsampled to 1/10 as many (the rare task), label-only
targets. Four runs with the same seed, steps and LR:

* uniform        — no instance weights, no task weights (the natural, skewed mixture);
* instance-only  — eq. 3–5 (minibatch estimator, per-task normalised weights);
* task-only      — eq. 6–7 (built-in evaluator: BACC of parsed label-only generations on held-out rows,
                   weighted task sampling, re-estimated every `--eval-every` steps);
* both.

Per task and run we report the held-out BACC of parsed generations (the paper's metric; unparseable outputs
count as wrong) and the held-out target NLL per token (teacher-forced), then the worst task by each. Whatever
the numbers say is what we report — a tiny random-init model on a CPU budget is far from the paper's regime.

    python benchmarks/sft_weighting.py [--steps 150] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sft_weighting.json"
RUNS = {
    "uniform": {"instance_weighting": False, "task_weighting": False},
    "instance-only": {"instance_weighting": True, "task_weighting": False},
    "task-only": {"instance_weighting": False, "task_weighting": True},
    "both": {"instance_weighting": True, "task_weighting": True},
}


def build_mix(sample: Path, out: Path, rare_factor: int) -> dict[str, int]:
    from adnanny_cook.corpus import read_corpus, write_corpus

    rows = [r for r in read_corpus(sample / "corpus").to_dicts() if r["mode"] == "label"]
    qa = [r for r in rows if r["task"] == "query_ad" and r["split"] == "train"]
    au = [r for r in rows if r["task"] == "ad_user" and r["split"] == "train"][: max(1, len(qa) // rare_factor)]
    held = [r for r in rows if r["task"] in ("query_ad", "ad_user") and r["split"] == "eval"]
    write_corpus(qa + au + held, out)
    return {"query_ad_train": len(qa), "ad_user_train": len(au),
            "query_ad_eval": sum(r["task"] == "query_ad" for r in held),
            "ad_user_eval": sum(r["task"] == "ad_user" for r in held)}


def evaluate(run_dir: Path, corpus: Path, tokenizer_dir: Path, hidden: int) -> dict[str, dict[str, float]]:
    """BACC of parsed generations and teacher-forced target NLL per task, on every held-out row."""
    from adnanny_sft.checkpoint import latest_checkpoint
    from adnanny_sft.data import read_rows
    from adnanny_sft.evaluation import TaskMetricEvaluator
    from adnanny_sft.formatting import collate, format_rows, pad_token_id
    from adnanny_sft.hf_backend import build_hf_backend
    from adnanny_sft.models import resolve_model

    spec, tok = resolve_model("tiny-deepseek-v3", str(tokenizer_dir), tiny_hidden_size=hidden)
    backend = build_hf_backend(spec)
    backend.load(latest_checkpoint(run_dir))
    held = read_rows(corpus, split="eval")
    ev = TaskMetricEvaluator(tok, held, max_rows_per_task=None, max_new_tokens=16, batch_size=32)
    metrics = ev(backend, step=0)
    out: dict[str, dict[str, float]] = {}
    for task in sorted(metrics):
        examples, _ = format_rows(tok, [r for r in held if r["task"] == task], max_seq_len=4096)
        nll_sum, tok_sum = 0.0, 0
        for k in range(0, len(examples), 32):
            chunk = examples[k:k + 32]
            mean = backend.per_sample_nll(collate(chunk, pad_id=pad_token_id(tok), sample_weights=[0.0] * len(chunk)))
            for e, m in zip(chunk, mean.tolist(), strict=True):
                nll_sum += m * e.num_target_tokens
                tok_sum += e.num_target_tokens
        out[task] = {"bacc": metrics[task], "parse_error_rate": ev.last_details[task].get("parse_error_rate", 0.0),
                     "target_nll": nll_sum / tok_sum, "n": len(examples)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--rare-factor", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", default=",".join(RUNS))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TORCHDYNAMO_DISABLE="1",
                      TOKENIZERS_PARALLELISM="false")

    from adnanny_cook.sample import make_sample

    from adnanny_sft.config import SFTConfig
    from adnanny_sft.train import train

    load_before = os.getloadavg()
    table: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        make_sample(sample, 0)
        corpus = Path(tmp) / "mix"
        counts = build_mix(sample, corpus, args.rare_factor)
        for name in args.runs.split(","):
            t0 = time.perf_counter()
            run_dir = Path(tmp) / name
            cfg = SFTConfig(corpus=str(corpus), tokenizer=str(sample / "tokenizer"), model="tiny-deepseek-v3",
                            tiny_hidden_size=args.hidden, target_forms=["label"], output_dir=str(run_dir),
                            max_steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_steps=10,
                            min_lr_ratio=0.3, task_eval_every=args.eval_every, eval_rows_per_task=48,
                            eval_max_new_tokens=16, progress=False, tensorboard=False, export=False,
                            threads=args.threads, seed=0, **RUNS[name])
            train(cfg)
            train_s = time.perf_counter() - t0
            per_task = evaluate(run_dir, corpus, sample / "tokenizer", args.hidden)
            from adnanny_sft.logs import read_log

            lambdas = [r["lambda"] for r in read_log(run_dir) if r["kind"] == "eval"]
            table[name] = {"tasks": per_task, "train_s": train_s, "final_lambda": lambdas[-1] if lambdas else None,
                           "worst_bacc": min(v["bacc"] for v in per_task.values()),
                           "worst_bacc_task": min(per_task, key=lambda t: per_task[t]["bacc"]),
                           "worst_nll": max(v["target_nll"] for v in per_task.values()),
                           "worst_nll_task": max(per_task, key=lambda t: per_task[t]["target_nll"])}
            print(f"{name}: {json.dumps(table[name])}", flush=True)
    load_after = os.getloadavg()
    tasks = sorted(next(iter(table.values()))["tasks"])
    head = " ".join(f"{t + ' BACC':>14} {t + ' NLL':>13}" for t in tasks)
    print(f"{'run':<14} {head} {'worst BACC':>11} {'worst NLL':>10} {'train s':>8}")
    for name, r in table.items():
        cells = " ".join(f"{100 * r['tasks'][t]['bacc']:>14.1f} {r['tasks'][t]['target_nll']:>13.4f}" for t in tasks)
        print(f"{name:<14} {cells} {100 * r['worst_bacc']:>11.1f} {r['worst_nll']:>10.4f} {r['train_s']:>8.0f}")
    print(f"mix {counts}; loadavg before {load_before}, after {load_after} (shared 2-core machine)")
    payload = {"benchmark": "sft_weighting", "mix": counts, "steps": args.steps, "batch": args.batch, "lr": args.lr,
               "hidden": args.hidden, "eval_every": args.eval_every, "runs": table,
               "loadavg_before": load_before, "loadavg_after": load_after, "cpu_count": os.cpu_count(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "note": "BACC of parsed label-only generations (fraction; table prints percent); NLL per target "
                       "token, teacher-forced, on the held-out split"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
