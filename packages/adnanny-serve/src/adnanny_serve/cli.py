"""``adnanny-serve <verb>``: cost, quantize, label, serve.

Long jobs (``label``, ``serve``) take ``--config FILE.toml``; their flags are generated from the typed configs of
:mod:`adnanny_serve.config` by adnanny-cook's one config mechanism (pydantic-settings): a TOML key and its flag
share one name (``chunk_size = 32`` <=> ``--chunk-size 32``), flags win, unknown keys are named with a suggestion.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from adnanny_serve.errors import AdNannyServeError, ConfigError

__all__ = ["main"]


def _resolve_model(value: str) -> Path:
    """``--model`` through adnanny-ckpt's one resolver (a directory, or a built-in name such as ``smollm2``)."""
    from adnanny_ckpt.models import resolve_model

    try:
        return resolve_model(value)
    except Exception as e:  # UnknownModelError names the value and the known names
        raise ConfigError(str(e)) from e


# --------------------------------------------------------------------------------------------- cost
def _cmd_cost(args: argparse.Namespace) -> int:
    from adnanny_serve.cost import baseline_cost_per_million, cost_per_million

    base = baseline_cost_per_million(
        per_million=args.baseline_per_million, input_tokens=args.baseline_input_tokens,
        output_tokens=args.baseline_output_tokens,
        input_dollars_per_million_tokens=args.input_dollars_per_million_tokens,
        output_dollars_per_million_tokens=args.output_dollars_per_million_tokens,
    )
    c = cost_per_million(args.gpu_dollars_per_s, args.samples_per_s)
    out = {"cost_per_million": c, "cost_ratio": c / base, "baseline_per_million": base}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"cost per 1M samples: ${c:.0f}   baseline: ${base:.0f}   cost ratio: {c / base:.2f}")
    return 0


# ----------------------------------------------------------------------------------------- quantize
def _cmd_quantize(args: argparse.Namespace) -> int:
    from adnanny_serve.quantize import quantize_checkpoint

    rep = quantize_checkpoint(_resolve_model(args.model), args.out, max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
                              overwrite=args.overwrite)
    if args.json:
        print(json.dumps(asdict(rep)))
    else:
        print(f"wrote {rep.out_dir}: {rep.fp8_tensors} FP8 + {rep.bf16_tensors} BF16 tensors, "
              f"{rep.bytes_in / 2**20:.1f} MiB -> {rep.bytes_out / 2**20:.1f} MiB in {rep.seconds:.1f}s")
    return 0


def _cpu_runtime(threads: int | None) -> int:
    """Set up this process for a long CPU job (:mod:`adnanny_serve.runtime`); the torch thread count in use."""
    import torch

    from adnanny_serve.runtime import tune_malloc

    tune_malloc()
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# -------------------------------------------------------------------------------------------- label
def _cmd_label(args: argparse.Namespace) -> int:
    from adnanny_serve.config import load_label_config
    from adnanny_serve.label import label_file

    cfg = load_label_config(args.config, cli=args.settings_source(parsed_args=args))
    _cpu_runtime(None)  # glibc's allocator only: labeling uses every core
    stats = label_file(cfg)
    if args.json:
        print(json.dumps({k: v for k, v in asdict(stats).items() if k != "extra"}))
    else:
        thr = "" if stats.threshold is None else f"; threshold {stats.threshold:g}"
        print(f"labeled {stats.rows} rows ({stats.rows_done_now} now, {stats.chunks_skipped} chunks resumed) -> "
              f"{stats.out}; parse errors: {stats.parse_errors}; truncated inputs: {stats.truncated_rows}{thr}; "
              f"{stats.samples_per_s:.2f} samples/s (manifest: {stats.manifest})")
    return 0


# -------------------------------------------------------------------------------------------- serve
def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from adnanny_serve.config import load_serve_config
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_serve.runtime import engine_threads
    from adnanny_serve.server import Limits, create_app

    c = load_serve_config(args.config, cli=args.settings_source(parsed_args=args))
    model_dir = _resolve_model(c.model)
    threads = _cpu_runtime(engine_threads(c.threads, c.device))
    engine = TransformersEngine.from_pretrained(model_dir, device=c.device, dtype=c.dtype, batch_size=c.batch_size,
                                                allow_pickle=c.allow_pickle, fp8_weights=c.fp8_weights,
                                                prefix_caching=c.prefix_caching)
    # a built-in name is served under that name ("smollm2"), a directory under its basename
    name = c.served_model_name or (Path(c.model).name if Path(c.model).is_dir() else c.model)
    key = c.api_key or os.environ.get("ADNANNY_SERVE_API_KEY")
    app = create_app(engine, model_name=name, api_key=key,
                     limits=Limits(max_prompt_tokens=c.max_prompt_tokens, max_tokens=c.max_tokens),
                     max_batch=c.batch_size, max_queue=c.max_queue, batch_wait_s=c.batch_wait_ms / 1000,
                     batching=c.batching, max_queue_tokens=c.max_queue_tokens)
    print(f"serving {name!r} on http://{c.host}:{c.port}/v1 ({threads} torch threads)", file=sys.stderr)
    # SIGTERM/SIGINT: stop accepting, give running requests 5 s, then cancel them (which stops the engine on them
    # at the next decoding step and refuses what is queued) instead of waiting for every queued request
    uvicorn.run(app, host=c.host, port=c.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


def _settings_flags(parser: argparse.ArgumentParser, model: Any) -> None:
    """``--config`` plus one flag per key of ``model`` (generated by adnanny-cook's one config mechanism)."""
    from adnanny_cook.settings import add_settings_flags

    parser.add_argument("--config", help="TOML file with the keys below (flag names without dashes; flags win).")
    parser.set_defaults(settings_source=add_settings_flags(parser, model))


# argparse's BooleanOptionalAction reads every `--no-...` spelling as the negation of its flag, so the documented
# `--no-threshold` (the flag of key `no_threshold`) would *clear* it; it is passed on as `--no_threshold`.
_ALIASES = {"--no-threshold": "--no_threshold", "--no-no-threshold": "--no-no_threshold"}


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    from adnanny_serve.config import LabelConfig, ServeConfig

    p = argparse.ArgumentParser(
        prog="adnanny-serve",
        description="AdNanny serving: FP8 export, batch labeling, an OpenAI-compatible server, cost per 1M samples.",
    )
    sub = p.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("cost", help="$ per 1M samples and the ratio to an API baseline (paper Table 10).",
                       description="Cost per 1M samples = GPU $/s / samples/s x 1e6; the baseline is given as $ "
                                   "per 1M samples or as token counts and per-1M-token prices.")
    c.add_argument("--gpu-dollars-per-s", type=float, required=True, help="GPU price in $ per second (0.0027).")
    c.add_argument("--samples-per-s", type=float, required=True, help="Measured labeling throughput.")
    c.add_argument("--baseline-per-million", type=float, help="Baseline $ per 1M samples (592 for GPT-4o).")
    c.add_argument("--baseline-input-tokens", type=float, help="Baseline average input tokens per sample.")
    c.add_argument("--baseline-output-tokens", type=float, help="Baseline average output tokens per sample.")
    c.add_argument("--input-dollars-per-million-tokens", type=float, help="Baseline input price, $ / 1M tokens.")
    c.add_argument("--output-dollars-per-million-tokens", type=float, help="Baseline output price, $ / 1M tokens.")
    c.add_argument("--json", action="store_true", help="Print {cost_per_million, cost_ratio, ...} as JSON.")
    c.set_defaults(func=_cmd_cost)

    q = sub.add_parser("quantize", help="Export an HF checkpoint to DeepSeek-style FP8 (128x128 block scales).",
                       description="Streams the checkpoint tensor by tensor: projection weights -> float8_e4m3fn + "
                                   "weight_scale_inv, the rest BF16; writes quantization_config to config.json.")
    q.add_argument("--model", required=True, help="Input HF checkpoint dir (BF16/FP32 safetensors) or a built-in "
                   "name (smollm2).")
    q.add_argument("--out", required=True, help="Output dir (must not exist unless --overwrite).")
    q.add_argument("--max-shard-gb", type=float, default=5.0, help="Max shard size in GiB (default 5).")
    q.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
    q.add_argument("--json", action="store_true", help="Print the export report as JSON.")
    q.set_defaults(func=_cmd_quantize)

    lab = sub.add_parser("label", help="Label a CSV/JSONL/Parquet file with a model (streamed, resumable).",
                         description="Writes the predictions file adnanny-eval reads: id, one column per label "
                                     "field, score (P(non-defect)), label_probs, reasoning, raw, token counts, "
                                     "input_truncated, parse_error; plus OUT.manifest.json. Rerun the same command "
                                     "to resume a killed job.")
    _settings_flags(lab, LabelConfig)
    lab.add_argument("--json", action="store_true", help="Print run stats as JSON.")
    lab.set_defaults(func=_cmd_label)

    s = sub.add_parser("serve", help="OpenAI-compatible server on the transformers engine.",
                       description="/v1/models, /v1/chat/completions, /v1/completions with request batching; a "
                                   "full queue answers 429 with Retry-After. API key from --api-key or "
                                   "$ADNANNY_SERVE_API_KEY (optional).")
    _settings_flags(s, ServeConfig)
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = [_ALIASES.get(a, a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdNannyServeError as e:
        print(f"adnanny-serve {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
