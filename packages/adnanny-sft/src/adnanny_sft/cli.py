"""``adnanny-sft``: command line of the multi-task SFT recipe.

    adnanny-sft train --config sft.toml [--lr 3e-4 --max_steps 200 ...]
    adnanny-sft config --config sft.toml [--json]      # the resolved configuration, validated

Every key of ``SFTConfig`` is also a flag with the same name (``--max_steps`` or ``--max-steps``); a flag
overrides the file. Booleans take ``true``/``false`` (a bare ``--lora`` means true); lists are comma-separated.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from typing import Any

from adnanny_sft.errors import AdNannySftError, NonFiniteLossError

__all__ = ["main", "build_parser"]


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from adnanny_sft.config import SFTConfig

    p.add_argument("--config", help="TOML file with config keys (tables group keys; their names are ignored)")
    group = p.add_argument_group("config keys (override the file)")
    types = SFTConfig.field_types()
    for f in fields(SFTConfig):
        typ = types[f.name]
        help_text = f.metadata.get("help", "")
        if f.default is not MISSING and f.default != "":
            help_text += f" (default: {f.default!r})"
        elif f.default_factory is not MISSING:
            help_text += f" (default: {','.join(f.default_factory()) or 'none'})"
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if typ is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif getattr(typ, "__origin__", None) is list:
            kwargs.update(metavar="A,B")
        else:
            kwargs.update(metavar=f.name.upper())
        group.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adnanny-sft",
        description="Multi-task SFT (AdNanny paper §4.2): loss on targets only (eq. 1-2), instance weights from "
                    "perplexity progress (eq. 3-5), task weights from validation difficulty (eq. 6-7).",
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    tr = sub.add_parser("train", help="train (or resume) from a config; writes checkpoints, logs and the model",
                        description="Train from a TOML config plus flag overrides. Resumes from the latest "
                                    "checkpoint in `output_dir` (resume = true). Writes log.jsonl, TensorBoard "
                                    "events, checkpoints/, model/ and manifest.json.")
    _add_config_flags(tr)
    tr.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    cf = sub.add_parser("config", help="print the resolved, validated configuration")
    _add_config_flags(cf)
    cf.add_argument("--json", action="store_true", help="print JSON instead of TOML-like lines")
    return parser


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    from adnanny_sft.config import SFTConfig

    return {f.name: getattr(ns, f.name) for f in fields(SFTConfig) if getattr(ns, f.name, None) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        from adnanny_sft.config import load_config

        cfg = load_config(ns.config, _overrides(ns))
        if ns.verb == "config":
            data = cfg.to_dict()
            if ns.json:
                print(json.dumps(data, indent=2))
            else:
                for k, v in data.items():
                    print(f"{k} = {json.dumps(v)}")
            return 0
        from adnanny_sft.train import train

        result = train(cfg)
    except NonFiniteLossError as e:
        print(f"adnanny-sft: {e}", file=sys.stderr)
        return 3
    except AdNannySftError as e:
        print(f"adnanny-sft: error: {e}", file=sys.stderr)
        return 2
    summary = {"output_dir": str(result.output_dir), "steps": result.steps, "resumed_from": result.resumed_from,
               "model_dir": str(result.model_dir) if result.model_dir else None, "metrics": result.metrics,
               "data": result.data.get("summary")}
    if ns.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"trained {result.steps} steps -> {result.output_dir} ({summary['data']}); metrics {result.metrics}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
