"""adnanny-rl GRPO vs TRL's GRPOTrainer, side by side: same model, prompts, G, completion length, reward, β,
loss type and number of policy iterations, CPU fp32.

Both sides train the same policy (by default adnanny-sft's fine-tuned tiny fixture, which answers in the tag
format, so rewards vary within a group) on the same rendered `query_ad` label-only prompts of the sample world,
with the same reward (adnanny-rl's `LabelReward`: per-field agreement, −1 for unparseable output). Settings are
set on both sides, not left to defaults: G = 4 completions per prompt, 2 prompts per step (batch 8), 24 completion
tokens, temperature 1, β = 0.04 with the k3 estimator (TRL's), token-mean aggregation (TRL's "dapo"), group std
scaling, μ = 1, one constant lr (`--lr`), no gradient checkpointing (TRL turns it on by default; it only trades speed
for memory), no warm-up. Each side runs in its own subprocess so peak RSS is its own.

Measured: steps/s over the training loop (setup excluded), generated tokens/s, peak RSS, the mean training
reward of the last half of the steps, and the greedy held-out reward after training computed by the SAME
evaluation code on both trained models. `ratio` = ours / TRL in steps per second.

    python benchmarks/rl_speed.py [--steps 40] [--lr 5e-4] [--model DIR] [--threads 1]
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

RESULTS = Path(__file__).resolve().parent / "results" / "rl_speed.json"
G, PROMPTS, MAX_TOKENS, BETA = 4, 2, 24, 0.04


def _prompts(args: argparse.Namespace, engine_like: object | None = None) -> tuple[list[dict], list[dict]]:
    from adnanny_cook.tasks import get_task
    from adnanny_rl.data import load_prompt_rows

    spec = get_task("query_ad")
    train, held = load_prompt_rows(Path(args.sample) / "corpus", spec)
    return ([{"id": r.id, "input": r.input, "labels": r.labels} for r in train[: args.steps * PROMPTS]],
            [{"id": r.id, "input": r.input, "labels": r.labels} for r in held[: args.eval_prompts]])


def _held_out_reward(model: object, tokenizer: object, rows: list[dict]) -> float:
    """Greedy label-only completions of the held-out prompts, scored by the shared reward."""
    from adnanny_cook.tasks import get_task
    from adnanny_rl.rewards.labels import LabelReward
    from adnanny_serve.engines import SamplingParams
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    spec = get_task("query_ad")
    eng = TransformersEngine(model, tokenizer, batch_size=8)
    prompts = [eng.apply_chat_template(spec.render_messages(r["input"], "label")) for r in rows]
    gens = eng.generate(prompts, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
    out = LabelReward(spec, mode="label")([{"labels": r["labels"]} for r in rows], [g.text for g in gens])
    return sum(out.total) / len(out.total)


def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    from adnanny_rl.config import load_config
    from adnanny_rl.train import main as train_main
    from adnanny_sft.logs import read_log

    torch.set_num_threads(args.threads)
    out = Path(args.tmp) / "ours"
    cfg = load_config(None, overrides=dict(
        policy=args.model, output_dir=str(out), steps=args.steps, prompts_per_step=PROMPTS, group_size=G,
        micro_batch=PROMPTS * G, beta=BETA, kl_estimator="k3", loss_aggregation="token-mean", scale_std=True, mu=1,
        max_completion_tokens=MAX_TOKENS, temperature=1.0, lr=args.lr, eval_prompts=0, save_every=10_000,
        seed=0, tasks=[{"task": "query_ad", "data": str(Path(args.sample) / "corpus"), "mode": "label"}]))
    t0 = time.perf_counter()
    train_main(cfg)
    wall = time.perf_counter() - t0
    recs = [r for r in read_log(out) if r.get("kind") == "train"]
    loop = sum(r["seconds"] for r in recs)
    gen_tokens = sum(r["tasks"]["query_ad"]["length"] * PROMPTS * G for r in recs)
    rewards = [r["tasks"]["query_ad"]["reward"] for r in recs]
    from transformers import AutoModelForCausalLM

    from adnanny_sft.models import load_tokenizer

    tok = load_tokenizer(out / "model")
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    _, held = _prompts(args)
    return {"side": "adnanny-rl", "steps": len(recs), "loop_seconds": loop, "wall_seconds": wall,
            "steps_per_s": len(recs) / loop, "generated_tokens_per_s": gen_tokens / loop,
            "mean_reward_last_half": sum(rewards[len(rewards) // 2:]) / max(1, len(rewards) - len(rewards) // 2),
            "reward_curve": rewards, "held_out_reward": _held_out_reward(model, tok, held),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker_trl(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from adnanny_cook.tasks import get_task
    from adnanny_rl.rewards.labels import LabelReward
    from adnanny_sft.models import load_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = get_task("query_ad")
    tok = load_tokenizer(args.model)
    train, held = _prompts(args)
    text = [tok.apply_chat_template(spec.render_messages(r["input"], "label"), tokenize=False,
                                    add_generation_prompt=True) for r in train]
    ds = Dataset.from_dict({"prompt": text, "gold": [json.dumps(r["labels"]) for r in train]})
    shared = LabelReward(spec, mode="label")

    def label_reward(prompts: list[str], completions: list[str], gold: list[str], **_: object) -> list[float]:
        return shared([{"labels": json.loads(g)} for g in gold], completions).total

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):  # noqa: ANN002, ANN003
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):  # noqa: ANN002, ANN003
            times.append(time.perf_counter() - self.t)

    cfg = GRPOConfig(output_dir=str(Path(args.tmp) / "trl"), use_cpu=True, bf16=False, max_steps=args.steps,
                     per_device_train_batch_size=PROMPTS * G, num_generations=G, max_completion_length=MAX_TOKENS,
                     temperature=1.0, beta=BETA, loss_type="dapo", scale_rewards="group", num_iterations=1,
                     learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, gradient_checkpointing=False,
                     logging_steps=1, save_strategy="no", report_to=[], seed=0, shuffle_dataset=False,
                     dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=label_reward, args=cfg, train_dataset=ds,
                          processing_class=tok, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    rewards = [h["reward"] for h in logs]
    lengths = [h.get("completions/mean_length", 0.0) for h in logs]
    loop = sum(times)
    return {"side": "trl-GRPOTrainer", "steps": len(times), "loop_seconds": loop, "wall_seconds": wall,
            "steps_per_s": len(times) / loop, "generated_tokens_per_s": sum(lengths) * PROMPTS * G / loop,
            "mean_reward_last_half": sum(rewards[len(rewards) // 2:]) / max(1, len(rewards) - len(rewards) // 2),
            "reward_curve": rewards, "held_out_reward": _held_out_reward(trainer.model, tok, held),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=5e-4, help="one constant learning rate for both sides")
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="", help="policy HF dir (default: adnanny-sft's fine-tuned tiny fixture)")
    p.add_argument("--sample", default="", help="sample world dir (default: the fixture's)")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        res = worker_ours(args) if args.worker == "ours" else worker_trl(args)
        print("RESULT " + json.dumps(res))
        return
    if not args.model or not args.sample:
        from adnanny_sft.testing import fine_tuned_fixture

        fx = Path(fine_tuned_fixture())
        args.model = args.model or str(fx)
        args.sample = args.sample or str(fx / "sample")
    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--worker", side, "--tmp", tmp, "--steps", str(args.steps),
                   "--eval-prompts", str(args.eval_prompts), "--lr", str(args.lr), "--threads", str(args.threads),
                   "--model", args.model,
                   "--sample", args.sample]
            res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TORCHDYNAMO_DISABLE": "1"})
            line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
            if res.returncode or not line:
                raise SystemExit(f"{side} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
            results.append(json.loads(line[0][len("RESULT "):]))
    load_after = os.getloadavg()
    ours, trl = results
    ratio = ours["steps_per_s"] / trl["steps_per_s"]
    for r in results:
        print(f"{r['side']:>16}: {r['steps_per_s']:.3f} steps/s, {r['generated_tokens_per_s']:.1f} gen tok/s, "
              f"RSS {r['peak_rss_mib']:.0f} MiB, reward (last half) {r['mean_reward_last_half']:.3f}, "
              f"held-out {r['held_out_reward']:.3f}")
    print(f"ratio (ours / TRL, steps per second): {ratio:.2f}; loadavg before {load_before}, after {load_after}")
    payload = {"benchmark": "rl_speed", "ratio": ratio, "model": args.model, "steps": args.steps, "group_size": G,
               "prompts_per_step": PROMPTS, "max_completion_tokens": MAX_TOKENS, "beta": BETA, "lr": args.lr,
               "kl_estimator": "k3", "loss": "token-mean (TRL dapo)", "num_iterations": 1, "threads": args.threads,
               "results": results, "loadavg_before": load_before, "loadavg_after": load_after,
               "trl_version": __import__("trl").__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = RESULTS.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2))
    os.replace(tmp_out, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
