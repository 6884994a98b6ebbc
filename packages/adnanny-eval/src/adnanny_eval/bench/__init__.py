"""``adnanny-eval bench``: general-capability benchmarks of a model (paper §5.4, Table 8).

ARC-Challenge and HellaSwag are scored by log-likelihood of each choice (``acc``, ``acc_norm``) and GSM8K
by few-shot chain-of-thought generation with greedy decoding (``exact_match``, strict and flexible
extraction), following lm-evaluation-harness' task definitions (cited in :mod:`adnanny_eval.bench.tasks`),
so the numbers can be set beside that harness' on the same items. Models run through adnanny-serve's
engines (optional ``adnanny-eval[bench]`` extra); this package and its import stay free of torch: the
engine is imported only when a model is run.
"""

from adnanny_eval.bench.metrics import (
    extract_flexible,
    extract_strict,
    gsm8k_gold,
    mc_outcome,
    mean_stderr,
    normalize_answer,
    paired_stderr,
)
from adnanny_eval.bench.runner import (
    PRIMARY_METRIC,
    BenchConfig,
    BenchResult,
    TaskResult,
    data_dir_from,
    run_bench,
    run_table8,
    run_task,
)
from adnanny_eval.bench.tasks import (
    TASK_NAMES,
    BenchError,
    GenItem,
    MCItem,
    find_data_file,
    gsm8k_prompt,
    hellaswag_preprocess,
    load_items,
    mc_requests,
)

__all__ = [
    "PRIMARY_METRIC",
    "TASK_NAMES",
    "BenchConfig",
    "BenchError",
    "BenchResult",
    "GenItem",
    "MCItem",
    "TaskResult",
    "data_dir_from",
    "extract_flexible",
    "extract_strict",
    "find_data_file",
    "gsm8k_gold",
    "gsm8k_prompt",
    "hellaswag_preprocess",
    "load_items",
    "mc_outcome",
    "mc_requests",
    "mean_stderr",
    "normalize_answer",
    "paired_stderr",
    "run_bench",
    "run_table8",
    "run_task",
]
