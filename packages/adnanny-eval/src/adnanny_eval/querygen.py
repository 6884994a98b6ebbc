"""Query-generation metrics of Table 6, defined precisely (the paper names them without formulas).

Input: generated queries, one row each, with the ``keyword`` they were generated for, the ``ad_text`` of the
ad (title + description) and the ``query``; optionally ``model`` (one Table 6 row per model). For Click
Attribute Ratio also historical clicked queries per keyword. ``e(x)`` is the L2-normalized embedding of
text x (all-MiniLM-L6-v2 by default), cos(a, b) = e(a)·e(b). All metrics are fractions in [0, 1].

* **Relevance** — mean over queries of ``½·(max(0, cos(q, keyword)) + max(0, cos(q, ad_text)))``: how well a
  query matches the advertiser's intent, judged against both the keyword and the ad.
* **Diversity** — mean over keywords with ≥ 2 queries of ``½·(semantic + distinct-2)``, where semantic =
  ``1 − mean_{i≠j} cos(q_i, q_j)`` (clipped to [0, 1]) and distinct-2 = unique word bigrams / all word bigrams
  of the keyword's queries (distinct-1 when they have no bigram). Variety of intents *and* of phrasings.
* **Difficulty** — share of queries that a frozen lexical matcher fails to map to their own ad: BM25
  (`adnanny_eval.lexical`, k1 = 1.2, b = 0.75) indexes every distinct ad text of the set (plus any extra
  `ad_pool` distractors); a query is *mapped* when its own ad scores strictly above every other ad (a tie
  at the top or a zero score is a failure: the matcher cannot decide). Hard-for-keyword-matching queries
  are what the paper wants for recall test suites; read it next to Relevance (an off-topic query is also
  "hard").
* **Click Attribute Ratio** — agreement of the attribute distribution of generated queries with that of
  clicked queries for the same keyword: ``Σ_a min(p_a, c_a)`` (histogram intersection = 1 − total variation
  distance), averaged over keywords that have clicked queries. Attributes come from a fixed lexicon tagger
  (`ATTRIBUTE_LEXICON`: price, time, location, audience, transaction, information; ``other`` when none
  fires; a query with k attributes adds 1/k to each).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from adnanny_eval.encoders import Encoder
from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.lexical import BM25Index, tokenize
from adnanny_eval.report import fmt, markdown_table

__all__ = [
    "ATTRIBUTE_LEXICON",
    "QueryGenMetrics",
    "attributes",
    "click_attribute_ratio",
    "difficulty",
    "distinct_n",
    "diversity",
    "querygen_metrics",
    "querygen_table",
    "relevance",
]

ATTRIBUTE_LEXICON: dict[str, frozenset[str]] = {
    "price": frozenset(
        "coupon coupons promo code codes discount discounts deal deals cheap cheapest sale "
        "price prices cost free off save savings rate rates voucher".split()
    ),
    "time": frozenset(
        "today tonight now week weekend weekends daily monthly hourly overnight long term "
        "short 24 hours year 2024 2025 2026 holiday".split()
    ),
    "location": frozenset("near nearby local downtown terminal lot deck city area closest".split()),
    "audience": frozenset(
        "veterans veteran military students student seniors senior business corporate "
        "family kids disabled frequent flyers members loyalty".split()
    ),
    "transaction": frozenset(
        "buy book booking reserve reservation reservations order online app subscribe rent hire".split()
    ),
    "information": frozenset(
        "how what best review reviews vs compare comparison guide tips hours near-me".split()
    ),
}


def attributes(query: str, lexicon: Mapping[str, frozenset[str]] = ATTRIBUTE_LEXICON) -> tuple[str, ...]:
    """Attributes a query mentions (sorted), or ``("other",)``."""
    toks = set(tokenize(query))
    found = tuple(sorted(a for a, words in lexicon.items() if toks & words))
    return found or ("other",)


def _attr_dist(queries: Sequence[str], lexicon: Mapping[str, frozenset[str]]) -> Counter[str]:
    dist: Counter[str] = Counter()
    for q in queries:
        attrs = attributes(q, lexicon)
        for a in attrs:
            dist[a] += 1.0 / len(attrs)
    total = sum(dist.values())
    return Counter({a: v / total for a, v in dist.items()}) if total else dist


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise AdNannyEvalError(f"the encoder must return a 2-D array [n, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


class _Embedder:
    """Encode each distinct text once per metric call."""

    def __init__(self, encoder: Encoder, texts: Sequence[str]) -> None:
        uniq = list(dict.fromkeys(texts))
        emb = _unit(encoder(uniq))
        if emb.shape[0] != len(uniq):
            raise AdNannyEvalError(f"the encoder returned {emb.shape[0]} vectors for {len(uniq)} texts")
        self.index = {t: i for i, t in enumerate(uniq)}
        self.emb = emb  # [U, d]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.emb[[self.index[t] for t in texts]]


def relevance(
    queries: Sequence[str], keywords: Sequence[str], ad_texts: Sequence[str] | None, encoder: Encoder
) -> float:
    """Mean ½(cos⁺(q, keyword) + cos⁺(q, ad)); keyword only when `ad_texts` is None."""
    _check_len(queries, keywords=keywords, ad_texts=ad_texts)
    emb = _Embedder(encoder, [*queries, *keywords, *(ad_texts or [])])
    q = emb(queries)
    kw = np.clip((q * emb(keywords)).sum(1), 0, 1)
    if ad_texts is None:
        return float(kw.mean())
    ad = np.clip((q * emb(ad_texts)).sum(1), 0, 1)
    return float(((kw + ad) / 2).mean())


def distinct_n(queries: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams / all word n-grams over `queries` (NaN when there is no n-gram)."""
    grams = [tuple(t[i : i + n]) for t in map(tokenize, queries) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def _group_diversity(emb: np.ndarray, queries: Sequence[str]) -> float:
    sim = emb @ emb.T  # [k, k]
    k = sim.shape[0]
    mean_off = (sim.sum() - np.trace(sim)) / (k * (k - 1))
    semantic = float(np.clip(1.0 - mean_off, 0.0, 1.0))
    lexical = distinct_n(queries, 2)
    if math.isnan(lexical):
        lexical = distinct_n(queries, 1)
    return (semantic + (0.0 if math.isnan(lexical) else lexical)) / 2


def diversity(queries: Sequence[str], keywords: Sequence[str], encoder: Encoder) -> float:
    """Mean over keywords (≥ 2 queries) of ½(1 − mean pairwise cos + distinct-2); NaN if no such keyword."""
    _check_len(queries, keywords=keywords)
    emb = _Embedder(encoder, queries)
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keywords):
        groups.setdefault(k, []).append(i)
    vals = [
        _group_diversity(emb([queries[i] for i in idx]), [queries[i] for i in idx])
        for idx in groups.values()
        if len(idx) >= 2
    ]
    return float(np.mean(vals)) if vals else math.nan


def difficulty(queries: Sequence[str], ad_texts: Sequence[str], ad_pool: Sequence[str] = ()) -> float:
    """Share of queries whose own ad is not BM25's strict unique top-1 over all distinct ads (+ `ad_pool`)."""
    _check_len(queries, ad_texts=ad_texts)
    docs = list(dict.fromkeys([*ad_texts, *ad_pool]))
    if len(docs) < 2:
        raise AdNannyEvalError(
            f"Difficulty needs at least 2 distinct ads for the matcher to choose between, got {len(docs)}; "
            "pass distractor ads with `ad_pool` (`--ad-pool`)"
        )
    index = BM25Index(docs)
    doc_id = {d: j for j, d in enumerate(docs)}
    failed = 0
    for start in range(0, len(queries), 512):
        qs = list(queries[start : start + 512])
        own = np.array([doc_id[a] for a in ad_texts[start : start + 512]])
        s = index.scores(qs)  # [q, D]
        own_s = s[np.arange(len(qs)), own]
        s[np.arange(len(qs)), own] = -np.inf
        mapped = (own_s > 0) & (own_s > s.max(axis=1))
        failed += int((~mapped).sum())
    return failed / len(queries)


def click_attribute_ratio(
    queries: Sequence[str],
    keywords: Sequence[str],
    clicked_queries: Sequence[str],
    clicked_keywords: Sequence[str],
    lexicon: Mapping[str, frozenset[str]] = ATTRIBUTE_LEXICON,
) -> float:
    """Mean over keywords with clicks of Σ_a min(p_gen(a), p_click(a)); NaN if no keyword has clicks."""
    _check_len(queries, keywords=keywords)
    _check_len(clicked_queries, clicked_keywords=clicked_keywords)
    gen: dict[str, list[str]] = {}
    for q, k in zip(queries, keywords, strict=True):
        gen.setdefault(k, []).append(q)
    clicks: dict[str, list[str]] = {}
    for q, k in zip(clicked_queries, clicked_keywords, strict=True):
        clicks.setdefault(k, []).append(q)
    vals = []
    for k, qs in gen.items():
        if k in clicks:
            p, c = _attr_dist(qs, lexicon), _attr_dist(clicks[k], lexicon)
            vals.append(sum(min(p[a], c[a]) for a in set(p) | set(c)))
    return float(np.mean(vals)) if vals else math.nan


def _check_len(queries: Sequence[str], **others: Sequence[str] | None) -> None:
    if len(queries) == 0:
        raise AdNannyEvalError("no queries given; the metrics need at least one generated query")
    for name, seq in others.items():
        if seq is not None and len(seq) != len(queries):
            raise AdNannyEvalError(f"`{name}` has {len(seq)} entries but there are {len(queries)} queries")
        if seq is not None and any(not isinstance(x, str) for x in seq):
            raise AdNannyEvalError(f"`{name}` must be text; found a non-string (missing?) entry")


@dataclass(frozen=True)
class QueryGenMetrics:
    """One Table 6 row (fractions)."""

    model: str
    relevance: float
    diversity: float
    difficulty: float
    click_attribute_ratio: float
    n_queries: int
    n_keywords: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def querygen_metrics(
    frame: pl.DataFrame,
    encoder: Encoder,
    *,
    clicks: pl.DataFrame | None = None,
    ad_pool: Sequence[str] = (),
    model: str = "model",
) -> QueryGenMetrics:
    """All four metrics for one model's generated queries (`keyword`, `ad_text`, `query` columns)."""
    for col in ("keyword", "ad_text", "query"):
        if col not in frame.columns:
            raise AdNannyEvalError(
                f"generated queries need a `{col}` column (columns: {', '.join(frame.columns)})"
            )
    q = frame.get_column("query").to_list()
    kw = frame.get_column("keyword").to_list()
    ad = frame.get_column("ad_text").to_list()
    car = math.nan
    if clicks is not None:
        for col in ("keyword", "query"):
            if col not in clicks.columns:
                raise AdNannyEvalError(
                    f"clicked queries need a `{col}` column (columns: {', '.join(clicks.columns)})"
                )
        car = click_attribute_ratio(
            q, kw, clicks.get_column("query").to_list(), clicks.get_column("keyword").to_list()
        )
    return QueryGenMetrics(
        model=model,
        relevance=relevance(q, kw, ad, encoder),
        diversity=diversity(q, kw, encoder),
        difficulty=difficulty(q, ad, ad_pool),
        click_attribute_ratio=car,
        n_queries=len(q),
        n_keywords=len(set(kw)),
    )


def querygen_table(
    frame: pl.DataFrame,
    encoder: Encoder,
    *,
    clicks: pl.DataFrame | None = None,
    ad_pool: Sequence[str] = (),
) -> tuple[list[QueryGenMetrics], str]:
    """Table 6: one row per `model` value (or one row), and its Markdown (percent)."""
    if "ad_text" in frame.columns:  # one matcher pool for every model: same ads, same distractors
        ad_pool = [*frame.get_column("ad_text").unique(maintain_order=True).to_list(), *ad_pool]
    if "model" in frame.columns:
        models = frame.get_column("model").unique(maintain_order=True).to_list()
        rows = [
            querygen_metrics(
                frame.filter(pl.col("model") == m), encoder, clicks=clicks, ad_pool=ad_pool, model=str(m)
            )
            for m in models
        ]
    else:
        rows = [querygen_metrics(frame, encoder, clicks=clicks, ad_pool=ad_pool)]
    md = markdown_table(
        ["Model", "Relevance", "Diversity", "Difficulty", "Click Attr. Ratio"],
        [
            [
                r.model,
                fmt(r.relevance * 100),
                fmt(r.diversity * 100),
                fmt(r.difficulty * 100),
                fmt(r.click_attribute_ratio * 100),
            ]
            for r in rows
        ],
    )
    return rows, md + "\n"
