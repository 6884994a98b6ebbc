"""Megatron backend vs a plain HF/torch training loop on CPU: tokens/s ratio (1 process, same batches).

Both train the same tiny DeepSeek-V3 checkpoint (adnanny-ckpt's synthetic writer, converted to torch_dist
for megatron) on identical synthetic batches with identical AdamW settings, fp32. The HF loop runs
first, *before* megatron's process-wide CUDA->CPU shim is installed, so its number is not slowed by the
shim; the megatron number includes the shim's per-op overhead, which is a real cost of the CPU path.
The machine is shared: timings are noisy, `loadavg` is recorded; read the ratio, not the absolutes.

    python benchmarks/megatron_cpu.py [--steps 8] [--batch-size 4] [--seq-len 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both loops (default 1: on the shared, loaded 2-core "
                    "machine 2 threads made both loops 5-25x slower through contention)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "megatron_cpu.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    from adnanny_megatron.behaviour import _batches, hf_reference_losses, megatron_losses

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="megatron-cpu-bench-") as tmp:
        hf = Path(tmp) / "hf"
        cfg = tiny_deepseek_v3_config(fp8=False)
        write_synthetic_checkpoint(hf, cfg, dtype="bf16", seed=0)
        hf_to_mcore(str(hf), str(Path(tmp) / "mcore"), make_vocab_size_divisible_by=1, progress=False)
        n = args.warmup + args.steps
        batches = _batches(n, args.batch_size, args.seq_len, 0, cfg["vocab_size"])
        t_hf: list[float] = []
        l_hf = hf_reference_losses(hf, batches, lr=1e-3, clip=1.0, timings=t_hf)
        t_mg: list[float] = []
        l_mg = megatron_losses(hf, Path(tmp) / "mcore" / "release", batches, lr=1e-3, clip=1.0, timings=t_mg)
    tokens = args.batch_size * args.seq_len
    hf_tps = tokens / statistics.median(t_hf[args.warmup:])
    mg_tps = tokens / statistics.median(t_mg[args.warmup:])
    rel = max(abs(a - b) / abs(a) for a, b in zip(l_hf, l_mg, strict=True))
    result = {
        "benchmark": "megatron_cpu", "model": "tiny-deepseek-v3 (adnanny_ckpt.synthetic, fp32)",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
        "hf_loop_tokens_per_s": hf_tps, "megatron_tokens_per_s": mg_tps, "ratio_megatron_over_hf": mg_tps / hf_tps,
        "max_rel_loss_diff": rel, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "python": platform.python_version(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "note": "shared 2-core machine; timings noisy (see loadavg); the ratio is the result",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"{'loop':<22}{'tokens/s':>12}")
    print(f"{'plain HF/torch (base)':<22}{hf_tps:>12.1f}")
    print(f"{'megatron backend':<22}{mg_tps:>12.1f}")
    print(f"ratio megatron/HF = {mg_tps / hf_tps:.3f}   max rel loss diff = {rel:.2e}   loadavg {load_before}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2))
    os.replace(tmp_out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
