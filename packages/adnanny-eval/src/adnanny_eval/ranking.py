"""Ranking metrics for retrieval rewards and reports: recall@K and NDCG@K (paper §4.3 names both).

Inputs are per query: the ranked list of retrieved ids (best first) and the relevant ids, optionally with graded
gains. Conventions, stated because libraries differ:

* ``recall@K = |top-K ∩ relevant| / |relevant|`` (not divided by K); a query with no relevant id is undefined
  and is skipped with a `DegenerateMetricWarning` (counted in the result) rather than scored 0 or 1.
* ``NDCG@K`` uses the exponential gain ``2^g − 1`` and the discount ``1 / log2(rank + 1)`` (rank from 1), with
  the ideal DCG computed from the *relevant set's* gains (not only the retrieved ones), so retrieving nothing
  relevant gives 0 and a perfect ranking gives 1. Binary relevance (gain 1) makes ``2^1 − 1 = 1``.
* Duplicate ids in a ranking count once, at their first position.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from adnanny_eval.errors import AdNannyEvalError, DegenerateMetricWarning

__all__ = ["RankingMetrics", "ndcg_at_k", "ranking_metrics", "recall_at_k"]

Relevant = Mapping[Hashable, float] | Sequence[Hashable] | set[Hashable]


def _gains(relevant: Relevant) -> dict[Hashable, float]:
    if isinstance(relevant, Mapping):
        out = {k: float(v) for k, v in relevant.items() if float(v) > 0}
    else:
        out = {k: 1.0 for k in relevant}
    return out


def _dedup(ranked: Sequence[Hashable]) -> list[Hashable]:
    seen: set[Hashable] = set()
    out = []
    for r in ranked:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def _check_k(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise AdNannyEvalError(f"`k` must be a positive integer, got {k!r}")


def recall_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    """Recall@K of one query (NaN when it has no relevant id)."""
    _check_k(k)
    gains = _gains(relevant)
    if not gains:
        return math.nan
    top = _dedup(ranked)[:k]
    return sum(1 for r in top if r in gains) / len(gains)


def ndcg_at_k(ranked: Sequence[Hashable], relevant: Relevant, k: int) -> float:
    """NDCG@K of one query with gains ``2^g − 1`` (NaN when it has no relevant id)."""
    _check_k(k)
    gains = _gains(relevant)
    if not gains:
        return math.nan
    top = _dedup(ranked)[:k]
    dcg = sum((2.0 ** gains[r] - 1.0) / math.log2(i + 2) for i, r in enumerate(top) if r in gains)
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum((2.0 ** g - 1.0) / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


@dataclass(frozen=True)
class RankingMetrics:
    """Means over the queries that have at least one relevant id; `n_skipped` counts the others."""

    k: int
    recall: float
    ndcg: float
    n_queries: int
    n_skipped: int


def ranking_metrics(rankings: Mapping[Hashable, Sequence[Hashable]], relevant: Mapping[Hashable, Relevant],
                    k: int) -> RankingMetrics:
    """Mean recall@K and NDCG@K over the queries of `relevant` (a query absent from `rankings` retrieved nothing)."""
    _check_k(k)
    rec, nd, skipped = [], [], 0
    for q, rel in relevant.items():
        ranked = rankings.get(q, ())
        r = recall_at_k(ranked, rel, k)
        if math.isnan(r):
            skipped += 1
            continue
        rec.append(r)
        nd.append(ndcg_at_k(ranked, rel, k))
    if skipped:
        warnings.warn(f"{skipped} of {len(relevant)} queries have no relevant id and were skipped",
                      DegenerateMetricWarning, stacklevel=2)
    if not rec:
        return RankingMetrics(k=k, recall=math.nan, ndcg=math.nan, n_queries=0, n_skipped=skipped)
    return RankingMetrics(k=k, recall=sum(rec) / len(rec), ndcg=sum(nd) / len(nd), n_queries=len(rec),
                          n_skipped=skipped)
