"""recall@K and NDCG@K on hand-worked rankings."""

from __future__ import annotations

import math

import pytest

from adnanny_eval.errors import AdNannyEvalError, DegenerateMetricWarning
from adnanny_eval.ranking import ndcg_at_k, ranking_metrics, recall_at_k


def test_recall_by_hand() -> None:
    ranked = ["a", "x", "b", "y", "c"]
    assert recall_at_k(ranked, {"a", "b", "c", "d"}, 1) == pytest.approx(1 / 4)
    assert recall_at_k(ranked, {"a", "b", "c", "d"}, 3) == pytest.approx(2 / 4)
    assert recall_at_k(ranked, {"a", "b", "c", "d"}, 10) == pytest.approx(3 / 4)
    assert recall_at_k(["a", "a", "b"], ["a", "b"], 2) == pytest.approx(1.0)      # a repeat takes no slot
    assert math.isnan(recall_at_k(ranked, set(), 3))


def test_ndcg_binary_by_hand() -> None:
    # relevant at ranks 1 and 3 of 3, two relevant: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    assert ndcg_at_k(["a", "x", "b"], ["a", "b"], 3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["a", "b"], ["a", "b"], 2) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y"], ["a"], 2) == 0.0


def test_ndcg_graded_by_hand() -> None:
    # gains 2 and 1; ranked [low, high]: DCG = (2^1-1)/1 + (2^2-1)/log2(3); IDCG = 3/1 + 1/log2(3).
    got = ndcg_at_k(["lo", "hi"], {"hi": 2, "lo": 1}, 2)
    want = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert got == pytest.approx(want)
    # the ideal DCG uses the relevant set, not just the retrieved list: missing "hi" costs.
    assert ndcg_at_k(["lo"], {"hi": 2, "lo": 1}, 2) == pytest.approx(1 / (3 + 1 / math.log2(3)))


def test_mean_over_queries_skips_and_counts_empty() -> None:
    with pytest.warns(DegenerateMetricWarning, match="1 of 3"):
        m = ranking_metrics({"q1": ["a", "b"], "q2": ["z"]}, {"q1": ["b"], "q2": ["z", "w"], "q3": []}, 1)
    assert m.recall == pytest.approx((0.0 + 0.5) / 2)
    assert m.ndcg == pytest.approx((0.0 + 1.0 / (1.0)) / 2)
    assert (m.n_queries, m.n_skipped) == (2, 1)
    assert ranking_metrics({}, {"q": ["a"]}, 5).recall == 0.0            # a query never retrieved scores 0
    with pytest.raises(AdNannyEvalError, match="`k`"):
        recall_at_k(["a"], ["a"], 0)
