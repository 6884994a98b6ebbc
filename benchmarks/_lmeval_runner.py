"""Run lm-evaluation-harness itself on local copies of our items (executed in lm-eval's own venv).

Used by ``bench_calibration.py`` and ``bench_speed.py``; not imported by any package. Input: one JSON
argument file {model_dir, tasks: {name: [items in the HF schema the upstream task expects]}, batch_size,
work_dir, out}. For each task it writes the items as local JSONL in ``work_dir`` and a task YAML that
``include``s the installed harness' own task file (so its prompt, choices, ``process_docs`` and metrics
are used unchanged) with only the dataset pointed at the local file. Output: per task the harness'
metrics, per item its log-likelihoods and acc/acc_norm, and the wall time of ``simple_evaluate`` with the
model already loaded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

UPSTREAM = {"arc_challenge": "arc/arc_challenge.yaml", "hellaswag": "hellaswag/hellaswag.yaml"}


def main(arg_file: str) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    cfg = json.loads(Path(arg_file).read_text())
    work = Path(cfg["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    tasks_root = Path(lm_eval.__file__).parent / "tasks"
    names = []
    for task, items in cfg["tasks"].items():
        data = work / f"{task}.jsonl"
        data.write_text("".join(json.dumps(x) + "\n" for x in items))
        name = f"local_{task}"
        (work / f"{name}.yaml").write_text(
            f"include: {tasks_root / UPSTREAM[task]}\n"
            f"task: {name}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
            "training_split: null\nvalidation_split: null\ntest_split: test\n"
        )
        names.append(name)
    t0 = time.perf_counter()
    lm = HFLM(pretrained=cfg["model_dir"], dtype="float32", device="cpu", batch_size=cfg["batch_size"])
    load_s = time.perf_counter() - t0
    tm = TaskManager(include_path=str(work))
    out = {"lm_eval_version": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "", "load_s": load_s,
           "tasks": {}}
    for task, name in zip(cfg["tasks"], names):  # one task per call: a wall time per task
        t0 = time.perf_counter()
        res = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=tm, num_fewshot=0, log_samples=True,
                                      batch_size=cfg["batch_size"], bootstrap_iters=0)
        secs = time.perf_counter() - t0
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        out["tasks"][task] = {
            "seconds": secs,
            "metrics": {k: v for k, v in res["results"][name].items() if isinstance(v, (int, float))},
            "items": [{"doc_id": s["doc_id"], "lls": [float(r[0][0]) for r in s["resps"]],
                       "acc": s["acc"], "acc_norm": s["acc_norm"]} for s in samples],
        }
    Path(cfg["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
