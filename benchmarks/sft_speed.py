"""adnanny-sft training speed vs TRL's SFTTrainer, side by side, same model / data / max length / batch, CPU.

Each side runs in its own subprocess (so peak RSS is its own): one epoch over the same cook sample rows
(label-only and label+reasoning targets of query_ad / ad_user), loss on the assistant completion only,
AdamW at the same LR, batch size and max length, fp32. Throughput counts the real (non-padding) tokens of
the epoch divided by the summed optimizer-step time (setup and data preparation excluded on both sides;
whole-process wall time is reported too). Our side runs the real recipe (`adnanny_sft.train`) with its
defaults: length bucketing, selective LM head, minibatch instance weights (task weights off: they need
evaluation passes TRL does not do). A second row disables bucketing: that is the like-for-like row (TRL
does not bucket by length either), reported beside ours in the summary.

Fairness (issue 15): TRL 1.16's ``SFTConfig`` turns gradient checkpointing ON by default (7-11% of its step
time in an independent re-measurement); this script switches it off, as adnanny-sft does not checkpoint. The
JSON records every argument, the script's defaults and whether the run used them (``used_defaults``), so a
record made with other settings is visible as such.

    python benchmarks/sft_speed.py [--rows 128] [--batch 8] [--threads 1] [--model tiny-deepseek-v3|smollm2]

Timings are noisy on a shared machine: the JSON records os.getloadavg() before and after; the default of one
intra-op thread keeps the two sides comparable on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sft_speed.json"


def _rows(sample: Path, n: int) -> list[dict]:
    from adnanny_sft.data import read_rows

    rows = [r for r in read_rows(sample / "corpus", split="train") if r["task"] in ("query_ad", "ad_user")]
    pairs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:  # inputs present in both target forms, so our side derives no extra rows
        pairs.setdefault((r["task"], r["input"]), []).append(r)
    both = [g for g in pairs.values() if len(g) == 2]
    return [r for g in both[: n // 2] for r in g]


def _subset_corpus(sample: Path, n: int, out: Path) -> Path:
    from adnanny_cook.corpus import read_corpus, write_corpus

    keep = {r["id"] for r in _rows(sample, n)}
    write_corpus([r for r in read_corpus(sample / "corpus").to_dicts() if r["id"] in keep], out)
    return out


def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    from adnanny_sft.config import SFTConfig
    from adnanny_sft.logs import read_log
    from adnanny_sft.train import train

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = Path(args.tmp) / f"ours-{args.bucket}"
    corpus = _subset_corpus(Path(args.sample), args.rows, Path(args.tmp) / "corpus")
    cfg = SFTConfig(corpus=str(corpus), tokenizer=str(Path(args.sample) / "tokenizer") if args.model != "smollm2" else "",
                    model=args.model, tiny_hidden_size=args.hidden, output_dir=str(out), batch_size=args.batch,
                    max_seq_len=args.max_len, epochs=1.0, lr=1e-4, lr_schedule="constant", warmup_steps=0,
                    task_weighting=False, bucket_batches=args.bucket, progress=False, tensorboard=False,
                    export=False, save_every=10**9, threads=args.threads,
                    device="cpu")  # TRL runs use_cpu=True; `device` defaults to auto
    res = train(cfg)
    recs = [r for r in read_log(out) if r["kind"] == "train"]
    tokens = sum(r["tokens"] for r in recs)
    step_time = sum(r["tokens"] / r["tokens_per_s"] for r in recs)
    return {"side": f"adnanny-sft (bucket_batches={args.bucket})", "steps": res.steps, "tokens": tokens,
            "step_time_s": step_time, "tokens_per_s": tokens / step_time, "final_nll": recs[-1]["nll"],
            "wall_s": time.perf_counter() - t0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig as TrlConfig
    from trl import SFTTrainer

    from adnanny_sft.formatting import format_rows
    from adnanny_sft.hf_backend import load_causal_lm
    from adnanny_sft.models import resolve_model

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    spec, tok = resolve_model(args.model, str(Path(args.sample) / "tokenizer") if args.model != "smollm2" else "",
                              tiny_hidden_size=args.hidden)
    model = load_causal_lm(spec, seed=0)
    rows = _rows(Path(args.sample), args.rows)
    examples, _ = format_rows(tok, rows, max_seq_len=args.max_len)
    keep = {e.id for e in examples}  # the same rows our side trains on
    data = Dataset.from_list([{"prompt": [dict(m) for m in r["messages"]],
                               "completion": [{"role": "assistant", "content": r["target"]}]}
                              for r in rows if r["id"] in keep])

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.total, self.t, self.steps = 0.0, 0.0, 0

        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            self.total += time.perf_counter() - self.t
            self.steps += 1

    timer = Timer()
    cfg = TrlConfig(output_dir=str(Path(args.tmp) / "trl"), per_device_train_batch_size=args.batch,
                    max_length=args.max_len, num_train_epochs=1, learning_rate=1e-4, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10**6, save_strategy="no",
                    report_to="none", use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
                    completion_only_loss=True, seed=0, disable_tqdm=True,
                    gradient_checkpointing=False)  # TRL 1.16 defaults to True; adnanny-sft does not checkpoint
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer])
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    out = trainer.train()
    return {"side": "TRL SFTTrainer", "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
            "steps": timer.steps, "tokens": tokens, "step_time_s": timer.total,
            "tokens_per_s": tokens / timer.total, "final_loss_avg": out.training_loss,
            "wall_s": time.perf_counter() - t0,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-len", dest="max_len", type=int, default=512)
    p.add_argument("--model", default="tiny-deepseek-v3")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--bucket", type=int, default=8)
    p.add_argument("--sample")
    p.add_argument("--tmp")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    defaults = {a.dest: a.default for a in p._actions if a.dest in ("rows", "batch", "max_len", "model", "hidden",
                                                                     "threads")}
    if args.worker:
        res = worker_ours(args) if args.worker == "ours" else worker_trl(args)
        print("RESULT " + json.dumps(res))
        return

    from adnanny_cook.sample import make_sample

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TORCHDYNAMO_DISABLE="1",
               TOKENIZERS_PARALLELISM="false")
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "sample"
        make_sample(sample, 0)
        common = ["--rows", str(args.rows), "--batch", str(args.batch), "--max-len", str(args.max_len), "--model",
                  args.model, "--hidden", str(args.hidden), "--threads", str(args.threads), "--sample", str(sample)]
        for worker, bucket in (("trl", 1), ("ours", 8), ("ours", 1)):
            wtmp = Path(tmp) / f"{worker}-{bucket}"
            wtmp.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--worker", worker, "--bucket", str(bucket), "--tmp",
                                   str(wtmp), *common], capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"worker {worker} failed (exit {proc.returncode})")
            results.append(json.loads(line[len("RESULT "):]))
    load_after = os.getloadavg()
    trl = results[0]
    if trl.get("gradient_checkpointing"):
        raise SystemExit("TRL ran with gradient checkpointing on: the comparison would not be like for like")
    print(f"{'side':<36} {'steps':>5} {'tokens':>8} {'tok/s':>9} {'ratio':>6} {'peak RSS MiB':>12} {'wall s':>7}")
    for r in results:
        ratio = r["tokens_per_s"] / trl["tokens_per_s"]
        r["ratio_vs_trl"] = ratio
        print(f"{r['side']:<36} {r['steps']:>5} {r['tokens']:>8} {r['tokens_per_s']:>9.0f} {ratio:>6.2f} "
              f"{r['peak_rss_mib']:>12.0f} {r['wall_s']:>7.1f}")
    print(f"loadavg before {load_before}, after {load_after} (2-core shared machine: timings are noisy)")
    ours = next(r for r in results if r["side"].endswith("(bucket_batches=8)"))
    like = next(r for r in results if r["side"].endswith("(bucket_batches=1)"))
    used = {k: getattr(args, k) for k in defaults}
    payload = {"benchmark": "sft_speed", "args": used, "defaults": defaults, "used_defaults": used == defaults,
               "summary": {"ratio_vs_trl_ours (bucketing on)": ours["ratio_vs_trl"],
                           "ratio_vs_trl_like_for_like (no bucketing)": like["ratio_vs_trl"],
                           "trl_gradient_checkpointing": trl.get("gradient_checkpointing")},
               "model": args.model, "hidden": args.hidden, "rows": args.rows,
               "batch": args.batch, "max_len": args.max_len, "threads": args.threads, "device": "cpu",
               "dtype": "float32", "results": results, "loadavg_before": load_before, "loadavg_after": load_after,
               "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2))
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
