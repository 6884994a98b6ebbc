"""``adnanny-megatron <verb>``: train (under torchrun), parity (HF vs megatron), loss-check, info.

Examples::

    torchrun --nproc-per-node 4 -m adnanny_megatron.cli train --config train.toml --layout pp2,ep2
    adnanny-megatron parity --hf ~/.cache/adnanny/smollm2-135m --layout pp2 --json
    adnanny-megatron loss-check --hf tiny-hf/ --steps 5
    adnanny-megatron layout --hf-config DeepSeek-V3/config.json --pp 31 --ep 8 --dp 8 --json
    adnanny-megatron info
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["main"]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_train(sub: Any) -> None:
    from adnanny_megatron.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="train with megatron-core (run one process per rank under torchrun)",
        description="Megatron training loop (synthetic data; layouts, stub MoE optimizer, torch_dist "
        "checkpoints, resume). Every --config key has a flag of the same name that overrides it.",
    )
    p.add_argument("--config", help="TOML file with TrainConfig keys")
    for f in dataclasses.fields(TrainConfig):
        kind = {"int": int, "float": float, "bool": _bool}.get(str(f.type).split(" ")[0], str)
        if "int" in str(f.type) and "None" in str(f.type):
            kind = int
        p.add_argument(f"--{f.name}", dest=f.name, type=kind, default=None, help=f"(default {f.default!r})")


def _add_parity(sub: Any) -> None:
    p = sub.add_parser(
        "parity",
        help="compare HF transformers and megatron-core forward passes (per-layer hidden states, logits)",
        description="Loads the same HF checkpoint into transformers and (via adnanny-ckpt's torch_dist "
        "conversion, optionally resharded to --layout) into megatron-core; prints max/mean abs diffs per "
        "layer and exits 1 when any exceeds --tol. Multi-rank layouts run under torchrun automatically.",
    )
    p.add_argument("--hf", required=True, help="HF model dir (config.json + safetensors)")
    p.add_argument("--layout", default="tp1", help="megatron layout to check, e.g. pp2 / ep2 / tp2 (default tp1)")
    p.add_argument("--convert-layout", default=None,
                   help="layout adnanny-ckpt writes the torch_dist checkpoint in (default: --layout); a "
                   "different value exercises a reshard on load")
    p.add_argument("--tol", type=float, default=None, help="max abs diff allowed (default: 1e-4 fp32)")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the converted checkpoint goes (default: temp)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)


def _add_loss_check(sub: Any) -> None:
    p = sub.add_parser(
        "loss-check",
        help="training-behaviour check: N Megatron steps vs a plain HF/torch loop (fp32)",
        description="Converts --hf with adnanny-ckpt, trains N steps with the Megatron backend and with a "
        "plain transformers + torch AdamW loop on identical synthetic batches, and compares per-step losses "
        "(exit 1 when any relative difference exceeds --rtol).",
    )
    p.add_argument("--hf", required=True, help="HF model dir")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _add_layout(sub: Any) -> None:
    p = sub.add_parser(
        "layout",
        help="show which layers each pipeline stage holds (adnanny-ckpt's plan as megatron-core's layout)",
        description="Plans the layout with adnanny-ckpt (plan_layout: dense layers alone on stage 0 for MoE "
        "models, the rest balanced) or takes --stages, builds megatron-core's pipeline_model_parallel_layout "
        "from it without launching ranks, and prints per stage its layers (embedding, dense, MoE, MTP, head). "
        "Exits 2 when adnanny-ckpt or megatron-core refuses the layout.",
    )
    p.add_argument("--hf-config", required=True, help="HF config.json (or a model dir holding one)")
    p.add_argument("--pp", type=int, required=True)
    p.add_argument("--ep", type=int, default=1)
    p.add_argument("--dp", type=int, default=None, help="data-parallel size (default: ep)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--balance", default="params", choices=["params", "flops"], help="ckpt plan's cost model")
    p.add_argument("--stages", default=None, help="decoder layers per stage, e.g. 2,3,2 (default: ckpt's plan)")
    p.add_argument("--mtp", action="store_true", help="place the config's MTP layer(s) on the last stage")
    p.add_argument("--json", action="store_true", help="print JSON")


def _layout_cmd(args: Any) -> int:
    from adnanny_ckpt.errors import AdNannyCkptError
    from adnanny_ckpt.layout import plan_layout

    from adnanny_megatron.layout import check_layout, layout_from_stage_sizes
    from adnanny_megatron.provider import arch_spec, load_hf_config

    cfg = load_hf_config(args.hf_config)
    arch = arch_spec(cfg)
    mtp = arch.num_mtp_layers if args.mtp else 0
    try:
        if args.stages:
            lay = layout_from_stage_sizes(args.stages, ep=args.ep, tp=args.tp, dp=args.dp,
                                          num_experts=arch.num_experts, num_layers=arch.num_layers)
            plan = plan_layout(cfg, lay.pp, lay.ep, lay.tp, lay.dp, layer_map=lay.stages, balance=args.balance,
                               include_mtp=bool(mtp))
        else:
            plan = plan_layout(cfg, args.pp, args.ep, args.tp, args.dp, balance=args.balance,
                               include_mtp=bool(mtp))
    except AdNannyCkptError as exc:
        raise AdNannyMegatronError(f"adnanny-ckpt refused the layout: {exc}") from exc
    if plan.layout.pp != args.pp:
        raise AdNannyMegatronError(f"--stages gives {plan.layout.pp} stages but --pp is {args.pp}")
    views = check_layout(cfg, plan.layout, mtp_layers=mtp, plan=plan)
    lay = plan.layout
    if args.json:
        print(json.dumps({
            "pp": lay.pp, "ep": lay.ep, "dp": lay.dp, "tp": lay.tp, "world_size": lay.world_size,
            "num_layers": arch.num_layers, "first_k_dense": arch.first_k_dense, "mtp_layers": mtp,
            "megatron_layout": [v.megatron for v in views], "stages": [v.to_dict() for v in views],
            "accepted_by": "megatron-core pipeline_model_parallel_layout",
        }, indent=2))
    else:
        print(f"layout pp={lay.pp} ep={lay.ep} dp={lay.dp} tp={lay.tp} ({lay.world_size} GPUs), accepted by "
              "megatron-core")
        for v in views:
            print(v.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adnanny-megatron", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    _add_train(sub)
    _add_parity(sub)
    _add_loss_check(sub)
    _add_layout(sub)
    sub.add_parser("info", help="versions and which compatibility fixes apply here")
    args = parser.parse_args(argv)
    try:
        if args.verb == "train":
            from adnanny_megatron.train import TrainConfig, load_config
            from adnanny_megatron.train import main as train_main

            overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
            train_main(load_config(args.config, overrides))
            return 0
        if args.verb == "parity":
            from adnanny_megatron.parity import cli_parity

            return cli_parity(args)
        if args.verb == "loss-check":
            from adnanny_megatron.behaviour import run_behaviour_check

            rep = run_behaviour_check(args.hf, steps=args.steps, batch_size=args.batch_size,
                                      seq_len=args.seq_len, lr=args.lr, rtol=args.rtol)
            if args.json:
                print(json.dumps(rep.to_dict(), indent=2))
            else:
                print(f"{'step':>4}{'hf':>16}{'megatron':>16}{'rel_diff':>12}")
                for i, (a, b, r) in enumerate(zip(rep.hf, rep.megatron, rep.rel_diffs, strict=True)):
                    print(f"{i:>4}{a:>16.8f}{b:>16.8f}{r:>12.2e}")
                print("PASS" if rep.passed else "FAIL")
            return 0 if rep.passed else 1
        if args.verb == "layout":
            return _layout_cmd(args)
        if args.verb == "info":
            from importlib.metadata import version

            from adnanny_megatron import compat

            print(json.dumps({
                "megatron-core": version("megatron-core"), "torch": version("torch"),
                "transformer_engine": compat.have_te(), "known_working": compat.KNOWN_WORKING,
            }, indent=2))
            return 0
    except AdNannyMegatronError as exc:
        print(f"adnanny-megatron: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    raise SystemExit(main())
