"""``adnanny-serve <verb>``: cost, quantize, label, serve.

Long jobs (``label``, ``serve``) take ``--config FILE.toml``; a TOML key and its flag share one name
(``chunk_size = 32`` <=> ``--chunk-size 32``) and flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from adnanny_serve.errors import AdNannyServeError, ConfigError

__all__ = ["main"]


def _load_toml(path: str, allowed: set[str]) -> dict[str, Any]:
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"`--config` file {path!r} does not exist.")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"`--config` file {path!r} is not valid TOML: {e}") from e
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"`--config` file {path!r} has unknown keys {unknown}; known keys: {sorted(allowed)}.")
    return data


def _resolve_model(value: str) -> Path:
    """``--model`` through adnanny-ckpt's one resolver (a directory, or a built-in name such as ``smollm2``)."""
    from adnanny_ckpt.models import resolve_model

    try:
        return resolve_model(value)
    except Exception as e:  # UnknownModelError names the value and the known names
        raise ConfigError(str(e)) from e


def _merge(args: argparse.Namespace, keys: set[str]) -> dict[str, Any]:
    """TOML values overridden by the flags the user actually gave (argparse defaults are None)."""
    cfg = _load_toml(args.config, keys) if getattr(args, "config", None) else {}
    for k in keys:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    return cfg


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


# -------------------------------------------------------------------------------------------- label
def _cmd_label(args: argparse.Namespace) -> int:
    from adnanny_serve.label import LabelConfig, label_file

    keys = {f.name for f in fields(LabelConfig)}
    cfg = LabelConfig(**_merge(args, keys))
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
_SERVE_KEYS = {"model", "host", "port", "api_key", "device", "dtype", "batch_size", "max_queue", "batch_wait_ms",
               "max_prompt_tokens", "max_tokens", "served_model_name", "allow_pickle", "batching",
               "max_queue_tokens"}


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_serve.server import Limits, create_app

    c = _merge(args, _SERVE_KEYS)
    if not c.get("model"):
        raise ConfigError("`model` is required (`--model DIR` or `model = ...` in --config).")
    model_dir = _resolve_model(c["model"])
    engine = TransformersEngine.from_pretrained(model_dir, device=c.get("device", "cpu"), dtype=c.get("dtype"),
                                                batch_size=int(c.get("batch_size", 8)),
                                                allow_pickle=bool(c.get("allow_pickle", False)))
    # a built-in name is served under that name ("smollm2"), a directory under its basename
    name = c.get("served_model_name") or (Path(c["model"]).name if Path(c["model"]).is_dir() else c["model"])
    key = c.get("api_key") or os.environ.get("ADNANNY_SERVE_API_KEY")
    app = create_app(engine, model_name=name, api_key=key,
                     limits=Limits(max_prompt_tokens=int(c.get("max_prompt_tokens", 4096)),
                                   max_tokens=int(c.get("max_tokens", 1024))),
                     max_batch=int(c.get("batch_size", 8)), max_queue=int(c.get("max_queue", 64)),
                     batch_wait_s=float(c.get("batch_wait_ms", 5)) / 1000, batching=c.get("batching", "static"),
                     max_queue_tokens=None if c.get("max_queue_tokens") is None else int(c["max_queue_tokens"]))
    print(f"serving {name!r} on http://{c.get('host', '127.0.0.1')}:{c.get('port', 8000)}/v1", file=sys.stderr)
    # SIGTERM/SIGINT: stop accepting, give running requests 5 s, then cancel them (which stops the engine on them
    # at the next decoding step and refuses what is queued) instead of waiting for every queued request
    uvicorn.run(app, host=c.get("host", "127.0.0.1"), port=int(c.get("port", 8000)), log_level="info",
                timeout_graceful_shutdown=5)
    return 0


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
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
    lab.add_argument("--config", help="TOML file with the keys below (flags override it).")
    lab.add_argument("--model", help="Model dir (HF checkpoint; FP8 ones are dequantized at load on CPU) or a "
                     "built-in name (smollm2).")
    lab.add_argument("--task", help="Task: a built-in/registered name (query_ad, ad_user, keyword_query, ...) or "
                     "a TOML task file; default: the one task stored in the model dir (tasks/NAME.toml). A name "
                     "the model dir stores is loaded from there (the definition it was trained on).")
    lab.add_argument("--labels", help="Label fields to predict, comma-separated (e.g. `label` for relevance-only "
                     "query_ad).")
    lab.add_argument("--input", help="Input CSV / JSONL / Parquet: `id` + the task's input fields (renamed with "
                     "--columns), or a corpus-style `input` JSON column.")
    lab.add_argument("--columns", help="Map task fields to file columns: `query=search_term,ad_title=title,"
                     "id=row_id` (also applied to --few-shot-from).")
    lab.add_argument("--out", help="Output predictions Parquet.")
    lab.add_argument("--mode", choices=["label", "reasoning"], help="label: tags only (fast); reasoning: think first.")
    lab.add_argument("--engine", choices=["transformers", "vllm"], help="Inference engine (default transformers).")
    lab.add_argument("--device", help="cpu or cuda (default cpu).")
    lab.add_argument("--dtype", help="float32 / bfloat16 (default fp32 on CPU, bf16 on CUDA).")
    lab.add_argument("--batch-size", dest="batch_size", type=int, help="Prompts per generate call (default 8).")
    lab.add_argument("--chunk-size", dest="chunk_size", type=int, help="Rows per resumable chunk (default 64).")
    lab.add_argument("--max-tokens", dest="max_tokens", type=int,
                     help="Generation budget (label mode: 32 label tasks / 128 generation tasks; reasoning 512).")
    lab.add_argument("--max-input-tokens", dest="max_input_tokens", type=int,
                     help="Budget of the whole prompt in tokens: the longest input fields (e.g. descriptions) are "
                     "cut to fit, never the instructions; truncated rows are counted.")
    lab.add_argument("--top-logprobs", dest="top_logprobs", type=int, help="Alternatives kept per step for `score`.")
    lab.add_argument("--few-shot", dest="few_shot", type=int, help="K worked examples drawn from --few-shot-from, "
                     "balanced across the primary label's values (seeded; a row never sees itself).")
    lab.add_argument("--few-shot-from", dest="few_shot_from", help="Labeled CSV/JSONL/Parquet of your training "
                     "rows (same --columns).")
    lab.add_argument("--few-shot-seed", dest="few_shot_seed", type=int, help="Seed of the few-shot draw (default 0).")
    lab.add_argument("--example", action="store_const", const=True, help="Add the task's one fixed worked example. "
                     "It biases small models toward that example's label (SmolLM2 copied it on 95%% of rows); "
                     "prefer --few-shot.")
    lab.add_argument("--threshold", type=float, help="Decision threshold on `score` for the primary field "
                     "(defect iff score < threshold); default: the model's adnanny_model.json, if any.")
    lab.add_argument("--no-threshold", dest="no_threshold", action="store_const", const=True,
                     help="Ignore the model's threshold: greedy labels.")
    lab.add_argument("--executor", choices=["local", "ray"], help="local (default) or ray (engine replicas on Ray).")
    lab.add_argument("--num-workers", dest="num_workers", type=int, help="Ray workers (engine replicas).")
    lab.add_argument("--allow-pickle", dest="allow_pickle", action="store_const", const=True,
                     help="Load pickle weights (pytorch_model.bin) from a model folder without safetensors. "
                     "Unpickling runs code from the file: only for models you trust.")
    lab.add_argument("--no-progress", dest="progress", action="store_const", const=False, help="Hide the bar.")
    lab.add_argument("--json", action="store_true", help="Print run stats as JSON.")
    lab.set_defaults(func=_cmd_label)

    s = sub.add_parser("serve", help="OpenAI-compatible server on the transformers engine.",
                       description="/v1/models, /v1/chat/completions, /v1/completions with request batching; a "
                                   "full queue answers 429 with Retry-After. API key from --api-key or "
                                   "$ADNANNY_SERVE_API_KEY (optional).")
    s.add_argument("--config", help="TOML file with the keys below (flags override it).")
    s.add_argument("--model", help="Local HF checkpoint dir or a built-in name (smollm2).")
    s.add_argument("--served-model-name", dest="served_model_name", help="Name clients pass as `model`.")
    s.add_argument("--host", help="Bind address (default 127.0.0.1).")
    s.add_argument("--port", type=int, help="Port (default 8000).")
    s.add_argument("--api-key", dest="api_key", help="Require `Authorization: Bearer KEY`.")
    s.add_argument("--device", help="cpu or cuda.")
    s.add_argument("--dtype", help="float32 / bfloat16.")
    s.add_argument("--batch-size", dest="batch_size", type=int, help="Max requests per engine batch (default 8).")
    s.add_argument("--max-queue", dest="max_queue", type=int, help="Waiting requests before 429 (default 64).")
    s.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float, help="Wait for a batch to fill (default 5).")
    s.add_argument("--max-prompt-tokens", dest="max_prompt_tokens", type=int, help="Longest prompt (default 4096).")
    s.add_argument("--max-tokens", dest="max_tokens", type=int, help="Largest max_tokens allowed (default 1024).")
    s.add_argument("--max-queue-tokens", dest="max_queue_tokens", type=int,
                   help="Also refuse (429) when the waiting requests' prompt + max_tokens tokens would exceed this.")
    s.add_argument("--batching", choices=["static", "continuous"],
                   help="static (default): batches of requests with equal parameters; continuous: requests join "
                   "and leave the running batch at every decoding step (mixed parameters and seeds).")
    s.add_argument("--allow-pickle", dest="allow_pickle", action="store_const", const=True,
                   help="Load pickle weights (pytorch_model.bin) if the folder has no safetensors (trusted models only).")
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdNannyServeError as e:
        print(f"adnanny-serve {args.verb}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
