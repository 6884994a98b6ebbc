"""Table 8: the paper's numbers reproduce its relative changes and Avg row exactly."""

from __future__ import annotations

import polars as pl
import pytest

from adnanny_eval import AdNannyEvalError, regression_table
from adnanny_eval.demo import PAPER_TABLE8

# Relative changes printed in the paper's Table 8, per candidate column.
PAPER_MULTI = [
    -5.19,
    -0.94,
    0.32,
    -1.41,
    3.69,
    -26.93,
    -5.19,
    -5.35,
    0.42,
    2.20,
    -2.38,
    -1.35,
    -1.64,
    -2.99,
    -1.49,
    -2.03,
    -2.34,
    -54.06,
]
PAPER_PUBLIC = [
    0.72,
    0.00,
    0.42,
    2.23,
    3.69,
    -1.15,
    -1.89,
    -2.29,
    0.00,
    0.88,
    -0.13,
    -0.67,
    -0.22,
    -0.81,
    0.21,
    -0.32,
    -1.41,
    1.04,
]


def test_paper_table8_reproduces():
    t = regression_table(pl.DataFrame(PAPER_TABLE8))
    multi, public = "AdNanny (multi-task finetuned)", "AdNanny (+ public finetuned)"
    assert [round(x, 2) for x in t.changes[multi]] == PAPER_MULTI
    assert [round(x, 2) + 0.0 for x in t.changes[public]] == PAPER_PUBLIC
    assert t.averages == {"DeepSeek-R1": 0.867, multi: 0.819, public: 0.867}
    assert round(t.avg_changes[multi], 2) == -5.54 and round(t.avg_changes[public], 2) == 0.0
    md = t.to_markdown()
    assert "| anli_r3 | 0.694 | 0.658 (−5.19%) | 0.699 (+0.72%) |" in md
    assert "| **Avg.** | **0.867** | **0.819** (−5.54%) | **0.867** (0.00%) |" in md


def test_exact_average_reading_differs_as_documented():
    t = regression_table(pl.DataFrame(PAPER_TABLE8), avg_change_from_rounded=False)
    assert round(t.avg_changes["AdNanny (multi-task finetuned)"], 2) == -5.43


def test_baseline_choice_and_errors():
    df = pl.DataFrame({"benchmark": ["x", "y"], "a": [0.5, 0.8], "b": [0.4, 1.0]})
    t = regression_table(df, baseline="b")
    assert t.baseline == "b" and round(t.changes["a"][0], 2) == 25.0
    with pytest.raises(AdNannyEvalError, match=r"`baseline` 'zz' is not a column"):
        regression_table(df, baseline="zz")
    with pytest.raises(AdNannyEvalError, match=r"no `benchmark` column"):
        regression_table(df.rename({"benchmark": "task"}))
    with pytest.raises(AdNannyEvalError, match=r"scores 0 on `x`"):
        regression_table(pl.DataFrame({"benchmark": ["x"], "a": [0.0], "b": [0.1]}))
    with pytest.raises(AdNannyEvalError, match=r"score of `b` on `y` is missing"):
        regression_table(pl.DataFrame({"benchmark": ["x", "y"], "a": [0.5, 0.8], "b": [0.4, None]}))
