"""GPU check of adnanny-megatron (run by ``benchmarks/megatron_gpu.sh``; one GPU, one process).

Phases, each recorded into the JSON as soon as it finishes (a later failure keeps earlier results):

1. ``parity`` — a tiny DeepSeek-V3 HF checkpoint (adnanny-ckpt's synthetic writer, bf16 weights) is loaded
   into transformers and, via adnanny-ckpt's HF->torch_dist conversion, into our megatron model (local
   spec, no TransformerEngine); both in fp32 on the GPU; per-layer max/mean abs diffs + logits.
2. ``train_hf`` (baseline) and ``train_megatron`` — 20 training steps of a small DeepSeek-V3 config
   (MLA, 1 dense + 7 MoE layers, 32 routed experts + 1 shared, group-limited top-8, 462M params) on identical
   synthetic batches, measured in this one process on the same GPU. Megatron: bf16 params, fp32 grad buffers
   + fp32 main params, local spec (no TransformerEngine) with the speed options of issue 15 — the whole batch
   as one micro-batch, SDPA core attention (no T×T scores, no mask for these unpadded batches), experts as one
   grouped GEMM (megatron's GroupedMLP on torch's grouped matmul), dynamo left on (the .sh does not disable
   it on GPU). ``train_megatron_mbs1_local`` repeats the recorded slow configuration (micro-batch 1, local
   attention, one GEMM per expert) for 8 steps, to attribute the gain. Baseline: plain transformers model in
   bf16 + torch AdamW. Recorded: median tokens/s after warm-up, peak GPU memory, the loss curve, and MFU =
   tokens/s x training FLOPs per token (6 x activated params + causal attention) / the GPU's dense bf16 peak.
   The summary sets ``goal_met`` when Megatron reaches >= 0.8x the HF loop, and copies the CPU ratio recorded by
   ``benchmarks/megatron_cpu.py`` beside it.

Without CUDA (the CPU check of this script) the same phases run with a much smaller config and 3 steps.

    python benchmarks/megatron_gpu.py --out $OUT/megatron_gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def small_deepseek_config(cuda: bool) -> dict[str, Any]:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    if not cuda:
        return tiny_deepseek_v3_config(fp8=False)
    return tiny_deepseek_v3_config(
        hidden_size=1024, vocab_size=32768, num_hidden_layers=8, first_k_dense_replace=1,
        n_routed_experts=32, n_shared_experts=1, n_group=8, topk_group=4, num_experts_per_tok=8,
        num_attention_heads=16, q_lora_rank=384, kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32,
        v_head_dim=64, intermediate_size=2816, moe_intermediate_size=512, max_position_embeddings=4096,
        fp8=False,
    )


class Recorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def phase_parity(tmp: Path, dev: str) -> dict[str, Any]:
    from adnanny_ckpt import hf_to_mcore
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    from adnanny_megatron.parallel import Sizes
    from adnanny_megatron.parity import ParityReport, compare, hf_forward, megatron_forward, parity_inputs

    cfg = tiny_deepseek_v3_config(fp8=False)
    hf = tmp / "tiny-hf"
    write_synthetic_checkpoint(hf, cfg, dtype="bf16", seed=0)
    hf_to_mcore(str(hf), str(tmp / "tiny-mcore"), progress=False)  # ckpt's vocab-padding rule
    ids = parity_inputs(cfg["vocab_size"], 2, 64, 0)
    got = megatron_forward(hf, tmp / "tiny-mcore" / "release", ids, Sizes())
    ref = hf_forward(hf, ids, device=dev)
    rep = ParityReport(tol=1e-4, model_type="deepseek_v3 (tiny, fp32, local spec)")
    order = sorted((k for k in ref if k.startswith("layer.")), key=lambda k: int(k.split(".")[1]))
    for name in [*order, "final_norm", "logits"]:
        rep.rows.append(compare(name, ref[name], got[name], rep.tol))  # type: ignore[index]
    print(rep.table(), flush=True)
    return rep.to_dict()


def _tps(times: list[float], warmup: int, tokens: int) -> float:
    return tokens / statistics.median(times[warmup:])


def phase_train_hf(cfg: dict[str, Any], batches: list[Any], warmup: int, dev: str) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoConfig, AutoModelForCausalLM

    _peak_reset()
    c = dict(cfg)
    mt = c.pop("model_type")
    c.pop("architectures", None)
    c.pop("torch_dtype", None)
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, **c), dtype=dtype).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    times, losses = [], []
    for b in batches:
        _sync()
        t0 = time.perf_counter()
        ids = b.input_ids.to(dev)
        logits = model(input_ids=ids, attention_mask=b.attention_mask.to(dev)).logits.float()
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        loss = ((ce * b.loss_mask[:, 1:].to(dev)).sum(1) * b.sample_weights.to(dev)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    tokens = int(batches[0].input_ids.numel())
    out = {"tokens_per_s": _tps(times, warmup, tokens), "peak_mem_gib": _peak_gib(), "losses": losses,
           "step_s": times, "dtype": str(dtype), "params": sum(p.numel() for p in model.parameters())}
    del model, opt
    _peak_reset()
    return out


def train_flops_per_token(cfg: dict[str, Any], seq: int) -> float:
    """Training FLOPs per token: 6 x activated parameters (routed experts: top-k of E) + causal attention
    (QK^T and AV: 2·T·heads·(d_qk + d_v) per layer forward, halved by causality, x3 for backward)."""
    from adnanny_ckpt.names import mcore_params, model_spec_from_hf_config

    spec = model_spec_from_hf_config(cfg)
    topk = int(cfg.get("num_experts_per_tok") or 0)
    active = 0.0
    for p in mcore_params(spec, mtp=False):
        n = 1
        for d in p.shape:
            n *= d
        if p.group == "embedding":
            continue  # a lookup, no FLOPs
        active += n * (topk / spec.num_experts if p.expert is not None else 1.0)
    d_qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    attn = 3 * 0.5 * 2 * seq * spec.num_heads * (d_qk + spec.v_head_dim) * spec.num_layers
    return 6 * active + attn


def peak_bf16_flops(name: str) -> float | None:
    """Dense bf16 peak of known GPUs (vendor spec sheets, no sparsity); None when unknown."""
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10", 125e12)):
        if key in name:
            return flops
    return None


def phase_train_megatron(cfg: dict[str, Any], batches: list[Any], warmup: int, mbs: int, *,
                         core_attention: str = "auto", moe_grouped_gemm: bool | None = None) -> dict[str, Any]:
    from adnanny_megatron import provider
    from adnanny_megatron.backend import MegatronBackend, TrainSettings
    from adnanny_megatron.optim import OptimSettings

    _peak_reset()
    spec = provider.transformer_config_from_hf(cfg, core_attention=core_attention,  # bf16 on CUDA, fp32 on CPU
                                               moe_grouped_gemm=moe_grouped_gemm)
    be = MegatronBackend(spec, OptimSettings(lr=1e-4, clip_grad=1.0), TrainSettings(micro_batch_size=mbs), seed=0)
    times, losses, norms = [], [], []
    for b in batches:
        _sync()
        t0 = time.perf_counter()
        per_sample = be.forward_backward(b)
        stats = be.optimizer_step()
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(float((per_sample * b.sample_weights).sum()))
        norms.append(stats["grad_norm"])
    tokens = int(batches[0].input_ids.numel())
    c = spec.config
    out = {"tokens_per_s": _tps(times, warmup, tokens), "peak_mem_gib": _peak_gib(), "losses": losses,
           "grad_norms": norms, "step_s": times, "bf16": bool(c.bf16),
           "dispatcher": c.moe_token_dispatcher_type, "micro_batch_size": mbs,
           "core_attention": spec.core_attention, "moe_grouped_gemm": bool(c.moe_grouped_gemm),
           "dynamo_disabled": os.environ.get("TORCHDYNAMO_DISABLE", "0") == "1",
           "params": sum(p.numel() for p in be.model[0].parameters()),
           "loss_decreased": losses[-1] < losses[0]}
    del be
    _peak_reset()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
    ap.add_argument("--out", default=str(default_out / "megatron_gpu.json"))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 20 on GPU, 3 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    rec = Recorder(Path(args.out))
    steps = args.steps or (20 if cuda else 3)
    bsz = args.batch_size or (8 if cuda else 2)
    seq = args.seq_len or (1024 if cuda else 32)
    warmup = 3 if steps > 5 else 1
    import megatron.core

    rec.put("env", {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "megatron_core": getattr(megatron.core, "__version__", "?"), "python": platform.python_version(),
        "loadavg": os.getloadavg(), "steps": steps, "batch_size": bsz, "seq_len": seq, "warmup": warmup,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    from adnanny_megatron import compat, parallel

    compat.apply()
    rec.put("compat", {"have_te": compat.have_te(), "cpu_mode": compat.cpu_mode_active()})
    parallel.initialize(parallel.Sizes())
    t_start = time.perf_counter()
    status = 0
    with tempfile.TemporaryDirectory(prefix="megatron-gpu-") as tmp:
        for name, fn in (("parity", lambda: phase_parity(Path(tmp), dev)),):
            try:
                t0 = time.perf_counter()
                res = fn()
                res["wall_s"] = time.perf_counter() - t0
                rec.put(name, res)
                status |= 0 if res.get("passed") else 1
            except Exception:  # record and go on: the training phases are independent
                rec.put(name, {"error": traceback.format_exc()[-4000:]})
                status |= 2
                traceback.print_exc()
    from adnanny_megatron.behaviour import _batches

    cfg = small_deepseek_config(cuda)
    rec.put("train_config", cfg)
    batches = _batches(steps, bsz, seq, 0, cfg["vocab_size"])
    slow = batches[: min(len(batches), 8)]
    for name, fn in (("train_hf", lambda: phase_train_hf(cfg, batches, warmup, dev)),
                     ("train_megatron", lambda: phase_train_megatron(cfg, batches, warmup, bsz)),
                     ("train_megatron_mbs1_local",
                      lambda: phase_train_megatron(cfg, slow, min(warmup, len(slow) - 1), 1, core_attention="local",
                                                   moe_grouped_gemm=False))):
        try:
            t0 = time.perf_counter()
            res = fn()
            res["wall_s"] = time.perf_counter() - t0
            rec.put(name, res)
            print(f"{name:<16} tokens/s {res['tokens_per_s']:>12.1f}   peak mem {res['peak_mem_gib']} GiB", flush=True)
        except Exception:
            rec.put(name, {"error": traceback.format_exc()[-4000:]})
            status |= 4
            traceback.print_exc()
    hf_r, mg_r = rec.data.get("train_hf", {}), rec.data.get("train_megatron", {})
    if "tokens_per_s" in hf_r and "tokens_per_s" in mg_r:
        fpt = train_flops_per_token(cfg, seq)
        peak = peak_bf16_flops(rec.data["env"]["device"]) if cuda else None
        cpu_rec = Path(__file__).parent / "results" / "megatron_cpu.json"
        cpu_ratio = json.loads(cpu_rec.read_text()).get("ratio_megatron_over_hf") if cpu_rec.is_file() else None
        ratio = mg_r["tokens_per_s"] / hf_r["tokens_per_s"]
        old = rec.data.get("train_megatron_mbs1_local", {})
        rec.put("summary", {"ratio_megatron_over_hf_tokens_per_s": ratio, "goal": 0.8, "goal_met": ratio >= 0.8,
                            "ratio_slow_config_over_hf": old["tokens_per_s"] / hf_r["tokens_per_s"]
                            if "tokens_per_s" in old else None,
                            "train_flops_per_token": fpt, "peak_bf16_flops": peak,
                            "mfu_megatron": mg_r["tokens_per_s"] * fpt / peak if peak else None,
                            "mfu_hf": hf_r["tokens_per_s"] * fpt / peak if peak else None,
                            "cpu_ratio_recorded (benchmarks/results/megatron_cpu.json)": cpu_ratio,
                            "parity_passed": rec.data.get("parity", {}).get("passed"),
                            "total_wall_s": time.perf_counter() - t_start})
        print(json.dumps(rec.data["summary"], indent=2))
    parallel.destroy()
    print(f"results -> {rec.path}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
