"""The ``bench`` verb of ``adnanny-eval`` (registered by :func:`add_bench_parser`; nothing heavy at import)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser"]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v * 100:.2f}"


def _summary_md(result: dict[str, Any]) -> str:
    from adnanny_eval.report import markdown_table

    rows = []
    for task, r in result["tasks"].items():
        for m in ("acc", "acc_norm", "exact_match_strict", "exact_match_flexible"):
            if m in r:
                rows.append([task, m, _fmt(r[m]), _fmt(r[f"{m}_stderr"]), str(r["n"]), str(r["num_fewshot"])])
    return (f"model: {result['model']} ({result['model_dir']})\n\n"
            + markdown_table(["task", "metric", "value %", "s.e. %", "n", "shots"], rows) + "\n")


def _cmd_bench(args: argparse.Namespace) -> int:
    from adnanny_eval.bench.runner import BenchConfig, data_dir_from, run_bench, run_table8
    from adnanny_eval.bench.tasks import BenchError

    if (args.model is None) == (args.baseline is None):
        raise BenchError("give either `--model M` (one model) or `--baseline M --candidate M ...` (Table 8)")
    if args.candidate and args.baseline is None:
        raise BenchError("`--candidate` needs `--baseline`")
    cfg = BenchConfig(data_dir=data_dir_from(args.data_dir), tasks=tuple(args.tasks.split(",")), limit=args.limit,
                      out=args.out, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                      max_gen_tokens=args.max_gen_tokens, engine=args.engine, device=args.device, dtype=args.dtype,
                      progress=not args.no_progress)
    if args.model is not None:
        res = run_bench(args.model, cfg).to_dict()
        print(json.dumps(res, indent=2) if args.json else _summary_md(res))
    else:
        out = run_table8(args.baseline, args.candidate or [], cfg)
        if args.json:
            print(json.dumps({k: v for k, v in out.items() if k != "markdown"}, indent=2))
        else:
            print(out["markdown"])
    return 0


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``adnanny-eval`` sub-command parser ``sub``."""
    bp = sub.add_parser(
        "bench",
        help="general-capability benchmarks (ARC-Challenge, HellaSwag, GSM8K) of a model; Table 8 of several",
        description="Score a model on lm-evaluation-harness-style tasks from local files: multiple choice by "
        "log-likelihood (acc, acc_norm), GSM8K by greedy few-shot chain of thought (exact_match strict/flexible), "
        "each with its standard error. Resumable per task with --out. Needs the `adnanny-eval[bench]` extra.",
    )
    bp.add_argument("--model", help="HF model dir or a built-in name (smollm2)")
    bp.add_argument("--baseline", help="Table 8: the baseline model (dir or name)")
    bp.add_argument("--candidate", action="append", help="Table 8: a candidate model; repeat for more")
    bp.add_argument("--tasks", default="arc_challenge,hellaswag,gsm8k", help="comma-separated task names")
    bp.add_argument("--limit", type=int, help="score only the first N items of each task (file order)")
    bp.add_argument("--data-dir", type=Path,
                    help="folder with arc_challenge/, hellaswag/, gsm8k/ (default: $ADNANNY_BENCH_DATA)")
    bp.add_argument("--out", type=Path, help="results folder; makes runs resumable per task")
    bp.add_argument("--json", action="store_true", help="print one JSON object instead of Markdown")
    bp.add_argument("--batch-size", type=int, default=32, help="scored choices (or GSM8K prompts) per batch")
    bp.add_argument("--num-fewshot", type=int, default=5, help="GSM8K exemplars: the file's first K items")
    bp.add_argument("--max-gen-tokens", type=int, default=256, help="GSM8K completion length cap")
    bp.add_argument("--engine", default="transformers", choices=("transformers", "vllm"))
    bp.add_argument("--device", default="cpu")
    bp.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on CUDA)")
    bp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bp.set_defaults(func=_cmd_bench)
    return bp


if __name__ == "__main__":  # pragma: no cover
    from adnanny_eval.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
