"""``adnanny-ckpt``: convert DeepSeek-V3/R1 (FP8/BF16) and Llama-family HF checkpoints to and from sharded
megatron-core checkpoints, plan parallel layouts, verify results.

    adnanny-ckpt hf-to-mcore --hf DIR --out DIR --pp 2 --ep 2 [--tp 1] [--te-names] [--format torch_dist|legacy]
        [--workers N]
    adnanny-ckpt mcore-to-hf --mcore DIR --out DIR [--dtype source|bf16|fp8|float32] [--tokenizer DIR]
        [--max-shard-size 5GB] [--workers N]
    adnanny-ckpt plan --config config.json --pp 31 --ep 8 --dp 8 [--json]
    adnanny-ckpt verify DIR [--hf DIR] [--values] [--forward [--tolerance 1e-3]] [--json]

Long jobs also take ``--config FILE.toml`` (for hf-to-mcore / mcore-to-hf) whose keys are the flag names with
underscores; flags given on the command line override the file. Conversions resume after an interruption.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from adnanny_ckpt.errors import AdNannyCkptError

__all__ = ["main", "build_parser"]

_H2M_KEYS = {"hf", "out", "pp", "ep", "tp", "dp", "te_names", "format", "layer_map", "balance", "mtp",
             "make_vocab_size_divisible_by", "iteration", "allow_pickle", "overwrite", "workers"}
_M2H_KEYS = {"mcore", "out", "fp8", "dtype", "tokenizer", "max_shard_size", "overwrite", "workers"}


def _size(text: str) -> int:
    t = str(text).strip().upper()
    for unit, mult in (("GB", 10**9), ("GIB", 2**30), ("MB", 10**6), ("MIB", 2**20), ("KB", 10**3), ("KIB", 2**10)):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * mult)
    try:
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"`--max-shard-size` must be bytes or like '5GB'; got {text!r}") from None


def _layer_map(text: str) -> list[list[int]]:
    """``"0,1,2;3,4;5"`` -> [[0,1,2],[3,4],[5]]."""
    try:
        return [[int(x) for x in st.split(",") if x.strip()] for st in text.split(";")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"`--layer-map` must look like '0,1,2;3,4;5'; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adnanny-ckpt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)

    h = sub.add_parser("hf-to-mcore", help="HF safetensors (FP8/BF16) -> sharded megatron-core checkpoint")
    h.add_argument("--config", type=Path, help="TOML file with these options (flags override it)")
    h.add_argument("--hf", type=Path, help="HF checkpoint directory (config.json + safetensors)")
    h.add_argument("--out", type=Path, help="output directory (must not exist unless --overwrite)")
    h.add_argument("--pp", type=int, help="pipeline stages (default 1)")
    h.add_argument("--ep", type=int, help="expert-parallel ranks; must divide the routed experts (default 1)")
    h.add_argument("--tp", type=int, help="tensor-parallel ranks (default 1)")
    h.add_argument("--dp", type=int, help="data-parallel size (default = ep; EP groups sit inside DP groups)")
    h.add_argument("--te-names", action="store_true", default=None, help="TransformerEngine naming (fused layer_norm_weight)")
    h.add_argument("--format", choices=["torch_dist", "legacy"], help="torch_dist (default) or legacy per-rank files")
    h.add_argument("--layer-map", type=_layer_map, help="explicit layer->stage map, e.g. '0,1,2;3,4;5'")
    h.add_argument("--balance", choices=["params", "flops"], help="automatic stage balancing (default params)")
    h.add_argument("--mtp", choices=["copy", "drop"], help="copy (default) or drop the MTP layer")
    h.add_argument("--make-vocab-size-divisible-by", type=int, help="vocab padding unit, times TP (default 128)")
    h.add_argument("--iteration", type=int, help="write iter_XXXXXXX instead of release")
    h.add_argument("--allow-pickle", action="store_true", default=None, help="accept .bin/.pt inputs (unpickling!)")
    h.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --out")
    h.add_argument("--workers", type=int, help="processes converting ranks in parallel (default 1)")
    h.add_argument("--no-progress", action="store_true", help="no progress bar")
    h.add_argument("--json", action="store_true", help="print a JSON summary")

    m = sub.add_parser("mcore-to-hf", help="adnanny-ckpt megatron checkpoint -> HF safetensors")
    m.add_argument("--config", type=Path, help="TOML file with these options (flags override it)")
    m.add_argument("--mcore", type=Path, help="directory written by hf-to-mcore or saved by adnanny-megatron's backend")
    m.add_argument("--out", type=Path, help="output HF directory")
    m.add_argument("--dtype", choices=["source", "bf16", "fp8", "float32"],
                   help="source (default: each tensor as the HF source stored it, FP8 or BF16), bf16, fp8, float32")
    m.add_argument("--fp8", action="store_true", default=None, help="same as --dtype fp8")
    m.add_argument("--tokenizer", type=Path, help="tokenizer dir (required when the checkpoint has no HF source)")
    m.add_argument("--workers", type=int, help="processes writing shards in parallel (default 1)")
    m.add_argument("--max-shard-size", type=_size, help="max bytes per safetensors shard, e.g. 5GB (default)")
    m.add_argument("--overwrite", action="store_true", default=None, help="replace an existing --out")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("plan", help="layer->stage map, expert ranges and bytes per GPU from config.json alone")
    p.add_argument("--config", type=Path, required=True, help="HF config.json (or a directory holding it)")
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dp", type=int, default=None, help="default = ep")
    p.add_argument("--layer-map", type=_layer_map)
    p.add_argument("--balance", choices=["params", "flops"], default="params")
    p.add_argument("--include-mtp", action="store_true", help="place and count the MTP layer on the last stage")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    v = sub.add_parser("verify", help="check a converted checkpoint (files, checksums, keys, shapes, coverage)")
    v.add_argument("path", type=Path)
    v.add_argument("--hf", type=Path, help="HF source (default: the one recorded in the manifest)")
    v.add_argument("--values", action="store_true", help="also compare every tensor with the HF source, bit for bit")
    v.add_argument("--forward", action="store_true",
                   help="independent check: each layer's forward vs the reference's (--hf or the recorded source)")
    v.add_argument("--tolerance", type=float, default=1e-3, help="relative tolerance of --forward (default 1e-3)")
    v.add_argument("--json", action="store_true")
    return ap


def _merge(args: argparse.Namespace, keys: set[str]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if args.config is not None:
        try:
            cfg = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AdNannyCkptError(f"cannot read `--config` `{args.config}`: {exc}") from exc
        unknown = sorted(set(cfg) - keys)
        if unknown:
            raise AdNannyCkptError(
                f"`--config` `{args.config}`: unknown key(s) {', '.join(f'`{k}`' for k in unknown)}; "
                f"allowed: {', '.join(sorted(keys))}."
            )
    for k in keys:
        val = getattr(args, k, None)
        if val is not None:
            cfg[k] = val
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except AdNannyCkptError as exc:
        print(f"adnanny-ckpt: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.verb == "plan":
        from adnanny_ckpt.layout import plan_layout

        cfg_path = args.config / "config.json" if args.config.is_dir() else args.config
        if not cfg_path.exists():
            raise AdNannyCkptError(f"`--config` `{cfg_path}` does not exist.")
        plan = plan_layout(json.loads(cfg_path.read_text()), args.pp, args.ep, args.tp, args.dp,
                           layer_map=args.layer_map, balance=args.balance, include_mtp=args.include_mtp)
        data = plan.to_json()
        if args.json:
            print(json.dumps(data))
            return 0
        print(f"world size {data['world_size']} = PP {data['pp']} x DP {data['dp']} x TP {data['tp']} "
              f"(EP {data['ep']} inside DP); total params {data['total_params'] / 1e9:.2f} B")
        print(f"{'stage':>5}  {'layers':<14} {'emb':>3} {'head':>4} {'params (B)':>10} {'per GPU (B)':>11} {'GiB/GPU':>8}")
        for s in data["stages"]:
            lay = f"{s['layers'][0]}-{s['layers'][-1]}" if len(s["layers"]) > 1 else ",".join(map(str, s["layers"]))
            print(f"{s['stage']:>5}  {lay:<14} {'y' if s['has_embedding'] else '':>3} {'y' if s['has_head'] else '':>4} "
                  f"{s['params'] / 1e9:>10.2f} {s['params_per_gpu'] / 1e9:>11.2f} {s['bytes_per_gpu'] / 2**30:>8.1f}")
        if data["expert_ranges"]:
            print("experts per EP rank: " + ", ".join(f"{r}: {a}-{b}" for r, (a, b) in enumerate(data["expert_ranges"])))
        print(f"bytes_per_gpu = {data['bytes_per_gpu_formula']}")
        return 0
    if args.verb == "verify":
        from adnanny_ckpt.checks import verify

        rep = verify(args.path, args.hf, values=args.values, forward=args.forward, tolerance=args.tolerance,
                     progress=not args.json)
        print(json.dumps(rep) if args.json else f"OK: {rep}")
        return 0
    if args.verb == "hf-to-mcore":
        from adnanny_ckpt.hf2mcore import hf_to_mcore

        cfg = _merge(args, _H2M_KEYS)
        for k in ("hf", "out"):
            if k not in cfg:
                raise AdNannyCkptError(f"`--{k}` is required (flag or key in `--config`).")
        hf, out = Path(cfg.pop("hf")), Path(cfg.pop("out"))
        if "format" in cfg:
            cfg["ckpt_format"] = cfg.pop("format")
        res = hf_to_mcore(hf, out, progress=not args.no_progress, **cfg)
        if args.json:
            m = json.loads((res / "adnanny_ckpt.json").read_text())
            print(json.dumps({"out": str(res), "layout": m["layout"], "seconds": m["seconds"],
                              "files": sum(1 for r in m["ranks"].values() if r.get("file"))}))
        else:
            print(f"wrote {res}")
        return 0
    if args.verb == "mcore-to-hf":
        from adnanny_ckpt.mcore2hf import mcore_to_hf

        cfg = _merge(args, _M2H_KEYS)
        for k in ("mcore", "out"):
            if k not in cfg:
                raise AdNannyCkptError(f"`--{k}` is required (flag or key in `--config`).")
        kw: dict[str, Any] = {"fp8": bool(cfg.get("fp8", False)), "overwrite": bool(cfg.get("overwrite", False)),
                              "dtype": cfg.get("dtype", "source"), "workers": int(cfg.get("workers", 1))}
        if cfg.get("tokenizer") is not None:
            kw["tokenizer"] = Path(cfg["tokenizer"])
        if "max_shard_size" in cfg:
            kw["max_shard_bytes"] = _size(cfg["max_shard_size"])
        res = mcore_to_hf(Path(cfg["mcore"]), Path(cfg["out"]), progress=not args.no_progress, **kw)
        print(json.dumps({"out": str(res)}) if args.json else f"wrote {res}")
        return 0
    raise AssertionError(args.verb)  # argparse restricts verbs


if __name__ == "__main__":  # pragma: no cover - python -m adnanny_ckpt.cli
    sys.exit(main())
