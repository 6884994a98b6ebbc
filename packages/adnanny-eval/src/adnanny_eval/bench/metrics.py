"""Benchmark metrics: multiple-choice accuracy, GSM8K number extraction, standard errors.

Standard errors are those lm-evaluation-harness prints (``mean_stderr``): the sample standard deviation
(n − 1) over √n. The paired standard error of a difference between two models on the same items is the same
formula applied to the per-item differences, which is what makes a Table 8 change readable: two models
that agree on most items have a much smaller paired error than the two unpaired errors suggest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from adnanny_eval.bench.tasks import BenchError

__all__ = [
    "INVALID",
    "extract_flexible",
    "extract_strict",
    "gsm8k_gold",
    "mc_outcome",
    "mean_stderr",
    "normalize_answer",
    "paired_stderr",
]

INVALID = "[invalid]"  # what an extraction with no match yields (never equals a gold number)
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_IGNORE = (re.compile(","), re.compile(r"\$"), re.compile(r"(?s).*#### "), re.compile(r"\.$"))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample sd / √n); the error is NaN for fewer than 2 values."""
    n = len(values)
    if n == 0:
        raise BenchError("no scored items: nothing to average (check `--limit` and the data file)")
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def paired_stderr(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Mean of ``b − a`` item by item and its standard error (the items must be the same, in order)."""
    if len(a) != len(b):
        raise BenchError(f"paired comparison needs the same items; got {len(a)} and {len(b)} scores")
    return mean_stderr([y - x for x, y in zip(a, b)])


def mc_outcome(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, int]:
    """Predictions and 0/1 scores from the choices' log-likelihoods (ties go to the first choice)."""
    if len(lls) != len(choices) or not lls:
        raise BenchError(f"{len(lls)} log-likelihoods for {len(choices)} choices")
    pred = max(range(len(lls)), key=lambda j: (lls[j], -j))
    normed = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
    pred_norm = max(range(len(lls)), key=lambda j: (normed[j], -j))
    return {"pred": pred, "pred_norm": pred_norm, "acc": int(pred == gold), "acc_norm": int(pred_norm == gold)}


def normalize_answer(text: str) -> str:
    """The harness' exact-match normalisation: drop commas, ``$``, text up to ``#### ``, a final ``.``."""
    for rx in _IGNORE:
        text = rx.sub("", text)
    return text.strip().lower()


def extract_strict(completion: str) -> str:
    """The number after the first ``#### `` (the format the exemplars teach), else :data:`INVALID`."""
    m = _STRICT.search(completion)
    return m.group(1) if m else INVALID


def extract_flexible(completion: str) -> str:
    """The last number-like span of the completion, else :data:`INVALID`."""
    found = _FLEXIBLE.findall(completion)
    if not found:
        return INVALID
    a, b = found[-1]
    return a or b


def gsm8k_gold(answer: str) -> str:
    """The normalised final number of a reference solution (what follows ``#### ``)."""
    return normalize_answer(answer)
