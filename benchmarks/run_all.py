"""Every package benchmark in one command, then one summary table of their headline numbers.

    hatch run python benchmarks/run_all.py                 # run each CPU benchmark in turn, then summarise
    hatch run python benchmarks/run_all.py --summary       # only summarise the JSON already in results/
    hatch run python benchmarks/run_all.py --only rl_speed,eval_speed --timeout 1200
    hatch run python benchmarks/run_all.py --gpu           # also the GPU scripts (on a machine with CUDA)

Each benchmark is its own script with its own defaults (see its docstring); this runs them one after another
(never two at once: on a small machine they would measure each other), each as a subprocess with a timeout, and
a failure or timeout of one is recorded and the rest still run. The summary reads each benchmark's JSON in
`benchmarks/results/` and prints the numbers its issue names as the claim (a ratio beside its peer, a BACC
beside its baseline), with the file's age, so a stale result is visible. It is written to
`benchmarks/results/summary.json` and `summary.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script, where its JSON lands, and the dotted keys of its headline numbers."""

    name: str
    script: str
    result: str
    headline: tuple[str, ...]
    peer: str
    args: tuple[str, ...] = ()
    gpu: bool = False
    extra: dict[str, str] = field(default_factory=dict)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("paper_tables", "paper_tables.py", "paper_tables.json", ("n_checked", "n_flagged"),
              "the paper's own printed values"),
    Benchmark("eval_speed", "eval_speed.py", "eval_speed.json",
              ("ours_metrics_only_s", "sklearn_metrics_only_s"), "scikit-learn"),
    Benchmark("bench_calibration", "bench_calibration.py", "bench_calibration.json", ("tasks.*.gap_to_published_pp",),
              "lm-evaluation-harness"),
    Benchmark("bench_speed", "bench_speed.py", "bench_speed.json", ("ours_items_per_s", "lm_eval_items_per_s"),
              "lm-evaluation-harness"),
    Benchmark("cook_overhead", "cook_overhead.py", "cook_overhead.json", ("bare_rps_median", "client_rps_median"),
              "a bare HTTP client"),
    Benchmark("cook_filters", "cook_filters.py", "cook_filters.json",
              ("baseline_parse_only_cps", "filters_hashing_cps", "filters_minilm_cps"), "parse-only"),
    Benchmark("ckpt_convert", "ckpt_convert.py", "ckpt_convert.json",
              ("rows.*.*.speed_ratio_vs_naive", "rows.*.*.rss_ratio_vs_naive"), "the naive load-everything script"),
    Benchmark("megatron_cpu", "megatron_cpu.py", "megatron_cpu.json", ("ratio_megatron_over_hf",),
              "a plain HF training loop"),
    Benchmark("sft_speed", "sft_speed.py", "sft_speed.json", ("ratio", "results.*.ratio_vs_trl"), "TRL SFTTrainer"),
    Benchmark("sft_weighting", "sft_weighting.py", "sft_weighting.json", ("runs.*.worst_bacc",), "uniform weighting"),
    Benchmark("rl_speed", "rl_speed.py", "rl_speed.json", ("ratio",), "TRL GRPOTrainer"),
    Benchmark("serve_label_speed", "serve_label_speed.py", "serve_label_speed.json",
              ("results.*.ratio", "label_vs_reasoning_ratio"), "transformers' batched generate"),
    Benchmark("serve_server_load", "serve_server_load.py", "serve_server_load.json",
              ("batched_vs_unbatched_rps", "continuous_vs_static_rps"), "static batching"),
    Benchmark("serve_fp8_bacc", "serve_fp8_bacc.py", "serve_fp8_bacc.json", ("results.*.BACC", "label_agreement"),
              "BF16"),
    Benchmark("own_data", "own_data.py", "own_data.json", ("datasets.*.comparisons.fine_tuned_vs_prompted.candidate.BACC",
               "datasets.*.comparisons.fine_tuned_vs_prompted.baseline.BACC", "datasets.*.verdict.acceptance"),
              "the lexical / popularity-genre baseline and the prompted base model"),
    Benchmark("flow_tables", "flow_tables.py", "flow_tables.json", ("tables.*",), "the paper's tables"),
    Benchmark("megatron_gpu", "megatron_gpu.sh", "megatron_gpu.json", ("summary.ratio_megatron_over_hf_tokens_per_s",),
              "a plain HF loop on the same GPU", gpu=True),
    Benchmark("serve_gpu", "serve_gpu.py", "serve_gpu.json", ("results.*", "quantize_report.bytes_in", "quantize_report.bytes_out"), "BF16 on the same GPU", gpu=True),
)


def lookup(data: Any, dotted: str) -> dict[str, Any]:
    """Values at a dotted path; `*` matches every key (or index) at that level. Missing paths give {}."""
    found: dict[str, Any] = {}

    def walk(node: Any, parts: list[str], prefix: str) -> None:
        if not parts:
            if isinstance(node, (int, float, str, bool)) or node is None:
                found[prefix] = node
            return
        head, rest = parts[0], parts[1:]
        items: list[tuple[str, Any]]
        if isinstance(node, dict):
            items = list(node.items()) if head == "*" else ([(head, node[head])] if head in node else [])
        elif isinstance(node, list):
            items = [(str(i), v) for i, v in enumerate(node)] if head == "*" else []
        else:
            items = []
        for key, value in items:
            walk(value, rest, f"{prefix}.{key}" if prefix else key)

    walk(data, dotted.split("."), "")
    return found


def run_one(bench: Benchmark, timeout: float, python: str) -> dict[str, Any]:
    """Run one script in a subprocess; its stdout/stderr tail and exit status are kept."""
    path = HERE / bench.script
    if not path.exists():
        return {"status": "missing", "why": f"{path} does not exist"}
    cmd = (["bash", str(path)] if bench.script.endswith(".sh") else [python, str(path)]) + list(bench.args)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "wall_s": round(time.monotonic() - t0, 1), "cmd": cmd}
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    return {"status": status, "wall_s": round(time.monotonic() - t0, 1), "cmd": cmd,
            "tail": (proc.stdout + proc.stderr)[-2000:]}


def summarise(bench: Benchmark, ran: dict[str, Any] | None) -> dict[str, Any]:
    path = RESULTS / bench.result
    row: dict[str, Any] = {"benchmark": bench.name, "peer": bench.peer, "result": f"benchmarks/results/{bench.result}"}
    if ran is not None:
        row["run"] = {k: v for k, v in ran.items() if k != "tail"}
    if not path.exists():
        row["status"] = "no result"
        return row
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        row["status"] = f"unreadable: {e}"
        return row
    row["age_h"] = round((time.time() - path.stat().st_mtime) / 3600, 1)
    values: dict[str, Any] = {}
    for key in bench.headline:
        values.update(lookup(data, key))
    row["headline"] = values
    row["status"] = "ok" if values else "no headline keys found"
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | peer | headline | status | age (h) |", "|---|---|---|---|---|"]
    for r in rows:
        head = "; ".join(f"{k} = {_fmt(v)}" for k, v in list(r.get("headline", {}).items())[:6]) or "—"
        status = r["status"] if "run" not in r else f"{r['run']['status']} / {r['status']}"
        lines.append(f"| {r['benchmark']} | {r['peer']} | {head} | {status} | {r.get('age_h', '—')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", action="store_true", help="do not run anything; summarise results/")
    ap.add_argument("--only", default="", help="comma-separated benchmark names")
    ap.add_argument("--skip", default="", help="comma-separated benchmark names")
    ap.add_argument("--gpu", action="store_true", help="also run the GPU scripts")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark (default 3600)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    names = {b.name for b in BENCHMARKS}
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - names
    if unknown:
        print(f"run_all: unknown benchmark(s) {sorted(unknown)}; known: {', '.join(sorted(names))}", file=sys.stderr)
        return 2
    chosen = [b for b in BENCHMARKS if (not only or b.name in only) and b.name not in skip]
    runner: Callable[[Benchmark], dict[str, Any] | None]
    if args.summary:
        runner = lambda b: None  # noqa: E731
    else:
        has_cuda = shutil.which("nvidia-smi") is not None

        def runner(b: Benchmark) -> dict[str, Any] | None:
            if b.gpu and not (args.gpu and has_cuda):
                return {"status": "skipped", "why": "GPU script (pass --gpu on a CUDA machine)"}
            print(f"[run_all] {b.name}: {b.script} ...", flush=True)
            ran = run_one(b, args.timeout, args.python)
            print(f"[run_all] {b.name}: {ran['status']} in {ran.get('wall_s', 0)} s", flush=True)
            return ran

    rows = [summarise(b, runner(b)) for b in chosen]
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, text in (("summary.json", json.dumps({"rows": rows}, indent=2) + "\n"), ("summary.md", table)):
        tmp = RESULTS / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(RESULTS / name)
    failed = [r["benchmark"] for r in rows if r.get("run", {}).get("status") not in (None, "ok", "skipped")]
    if failed:
        print(f"[run_all] failed or timed out: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
