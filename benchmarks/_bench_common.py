"""Shared by ``bench_calibration.py`` and ``bench_speed.py``: the same items through ours and through lm-eval.

lm-evaluation-harness lives in its own virtualenv (``--lmeval-python``, default ``/work/venvs/lmeval/bin/python``;
``pip install torch==2.13.0 'lm-eval[hf]'`` there) and runs ``_lmeval_runner.py`` on local JSONL copies of the
items in the schema its upstream task files expect. Ours runs in this environment through
``adnanny_eval.bench.run_task`` with adnanny-serve's transformers engine. Both use fp32 on CPU, the same
batch size and the same thread count (``OMP_NUM_THREADS``, default 1: on a shared 2-core machine more threads
than free cores slows both down several-fold).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_LMEVAL_PYTHON = "/work/venvs/lmeval/bin/python"


def data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("ADNANNY_BENCH_DATA") or DEFAULT_DATA)


def hf_schema(task: str, data: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` items of our file in the schema the upstream lm-eval task reads."""
    from adnanny_eval.bench import find_data_file

    path = find_data_file(data, task)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    if task == "arc_challenge":  # the reformatted ARC file back to ai2_arc's fields
        return [{"id": r["id"], "question": r["question"],
                 "choices": {"text": [o["text"] for o in r["options"]], "label": [o["label"] for o in r["options"]]},
                 "answerKey": r["answer"]} for r in rows]
    return [{**r, "label": str(r["label"])} for r in rows]  # HellaSwag: original fields (label as text, as on HF)


def run_lmeval(model_dir: Path, tasks: dict[str, list[dict[str, Any]]], batch_size: int, python: str,
               threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmeval-") as tmp:
        args = Path(tmp) / "args.json"
        out = Path(tmp) / "out.json"
        args.write_text(json.dumps({"model_dir": str(model_dir), "tasks": tasks, "batch_size": batch_size,
                                    "work_dir": str(Path(tmp) / "work"), "out": str(out)}))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        t0 = time.perf_counter()
        r = subprocess.run([python, str(Path(__file__).with_name("_lmeval_runner.py")), str(args)], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"lm-eval run failed ({r.returncode}):\n{r.stderr[-4000:]}")
        res = json.loads(out.read_text())
        res["process_s"] = time.perf_counter() - t0
        return res


def run_ours(model_dir: Path, tasks: list[str], data: Path, n: int, batch_size: int, threads: int) -> dict[str, Any]:
    """Load once, then score each task; per-item log-likelihoods come back from the resume store."""
    import torch

    from adnanny_eval.bench import BenchConfig, run_task
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    engine = TransformersEngine.from_pretrained(model_dir, batch_size=batch_size)
    load_s = time.perf_counter() - t0
    cfg = BenchConfig(data_dir=data, tasks=tuple(tasks), limit=n, batch_size=batch_size, progress=False)
    out: dict[str, Any] = {"load_s": load_s, "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="ours-") as tmp:
        for task in tasks:
            store = Path(tmp) / task
            res = run_task(engine, task, cfg, store_dir=store, model_dir=str(model_dir))
            recs = sorted((json.loads(x) for x in (store / "items.jsonl").read_text().splitlines()), key=lambda r: r["i"])
            out["tasks"][task] = {"seconds": res.seconds, "metrics": res.metrics, "stderr": res.stderr,
                                  "items": recs}
    return out
