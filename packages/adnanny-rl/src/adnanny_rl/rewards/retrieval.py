"""Query generation → frozen retrieval, eq. (8) (doc2query-style injection).

The downstream model is a frozen retriever over the ad catalog — BM25 (adnanny-eval's `BM25Index`) or a dense
all-MiniLM-L6-v2 encoder. A policy generates queries for an ad; they are *injected* into the pipeline by appending
them to that ad's document (the retriever's parameters never change; only its index input does). The metric is
recall@K (or NDCG@K) of the right ads for **held-out clicked queries** — real queries users clicked the ad for,
never shown to the policy — with the injected queries (M_with) and without (M_base).

Which held-out queries a batch is scored on: those whose relevant ads include an ad of the batch. Expanding
8 ads of a 900-ad catalog cannot move the catalog-wide mean measurably, and queries of untouched ads only add the
same constant to both sides; restricting to the batch's ads keeps the delta about what the batch changed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from adnanny_rl.batch_reward import RewardTransform, reward_batches
from adnanny_rl.errors import RLConfigError
from adnanny_rl.rewards.base import RewardOutput

__all__ = ["RetrievalReward"]


class _ExpandableBM25:
    """BM25 scores of a few queries over the catalog with some documents expanded: exactly adnanny-eval's
    ``BM25Index(expanded documents).scores(queries)`` (its tokenizer, k1 = 1.2, b = 0.75 and non-negative idf;
    a test pins the two against each other), without rebuilding the [V, D] weight matrix on every call.

    Why: an expansion changes its document's length, hence the average length (every document's normaliser) and
    the df of the injected terms — but only the queries' own terms contribute to their scores. Scoring those few
    terms is ~10^2 times cheaper than a fresh index, which is what lets the held-out evaluation score every
    completion as its own batch (~10^3 calls) and the per-sample term run once per rollout."""

    def __init__(self, docs: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        from adnanny_eval.lexical import tokenize

        self.k1, self.b, self.n = k1, b, len(docs)
        toks = [tokenize(d) for d in docs]
        self.lengths = np.array([len(t) for t in toks], dtype=np.float64)               # [D]
        self._postings: dict[str, dict[int, int]] = {}
        for j, ts in enumerate(toks):
            for t in ts:
                p = self._postings.setdefault(t, {})
                p[j] = p.get(j, 0) + 1
        self._tf: dict[str, np.ndarray] = {}

    def _base_tf(self, term: str) -> np.ndarray:
        if term not in self._tf:
            tf = np.zeros(self.n, dtype=np.float64)                                        # [D]
            for j, c in self._postings.get(term, {}).items():
                tf[j] = c
            self._tf[term] = tf
        return self._tf[term]

    def scores(self, expansions: Mapping[int, Sequence[str]], queries: Sequence[str]) -> np.ndarray:
        """[Q, D] scores of `queries` when document j is extended with the texts `expansions[j]`."""
        from adnanny_eval.lexical import tokenize

        extra = {j: Counter(tokenize(" ".join(qs))) for j, qs in expansions.items() if qs}
        lengths = self.lengths.copy()
        for j, c in extra.items():
            lengths[j] += sum(c.values())
        avg = lengths.mean() if lengths.mean() > 0 else 1.0
        norm = self.k1 * (1 - self.b + self.b * lengths / avg)                              # [D]
        qcounts = [Counter(tokenize(q)) for q in queries]
        out = np.zeros((len(queries), self.n), dtype=np.float64)                            # [Q, D]
        for t in sorted({t for c in qcounts for t in c}):
            tf = self._base_tf(t)
            hits = [(j, c[t]) for j, c in extra.items() if t in c]
            if hits:
                tf = tf.copy()
                for j, c in hits:
                    tf[j] += c
            df = int((tf > 0).sum())
            if df == 0:                                  # in no document: BM25Index has no column for it
                continue
            idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
            w = idf * tf * (self.k1 + 1) / (tf + norm)                                      # [D]
            for i, c in enumerate(qcounts):
                if t in c:
                    out[i] += c[t] * w
        return out


class RetrievalReward:
    """Batch reward of eq. (8) for generation tasks whose output is queries for an ad (`keyword_query`...).

    `ads`: ad id -> document text (title + description); `heldout`: held-out clicked query -> ids of the ads it
    was clicked on. Each row must carry the ad id under `ad_field`; completions are parsed with the task
    definition's generation parser (an unparseable completion injects nothing and gets `format_penalty` added).

    `sample_weight` > 0 adds eq. 8's optional per-sample term: ``sample_weight · g(M_with − M_base)`` of the
    completion's OWN ad alone (only its document expanded, only its ad's held-out queries). The batch term gives
    a completion 1/P of the credit for its batch's gain; the per-sample term gives it its own, which is what a
    small run needs to learn at all (component `own_gain`). `batch_weight` scales the batch term (1: the paper's
    eq. 8; 0: the per-sample term alone — the batch term of a completion is mostly the other prompts' outcomes,
    so with group-std scaling it hands full-size advantages to groups whose own terms are all equal).
    """

    #: one value per reward batch (eq. 8): the recipe scores each held-out prompt as its own batch
    batch_level = True

    def __init__(self, spec: Any, ads: Mapping[str, str], heldout: Mapping[str, Sequence[str]], *, k: int = 10,
                 metric: str = "recall", retriever: str = "bm25", encoder: Callable[[Sequence[str]], Any] | None
                 = None, transform: RewardTransform | None = None, ad_field: str = "ad_id",
                 format_penalty: float = -0.1, sample_weight: float = 0.0, batch_weight: float = 1.0) -> None:
        from adnanny_eval.ranking import ndcg_at_k, recall_at_k

        if metric not in ("recall", "ndcg"):
            raise RLConfigError(f"`metric` must be 'recall' or 'ndcg', got {metric!r}")
        if retriever not in ("bm25", "dense"):
            raise RLConfigError(f"`retriever` must be 'bm25' or 'dense', got {retriever!r}")
        if not ads:
            raise RLConfigError("`ads` is empty: the retriever needs a catalog")
        missing = sorted({a for rel in heldout.values() for a in rel} - set(ads))
        if missing:
            raise RLConfigError(f"held-out queries name ads not in the catalog: {missing[:5]}")
        self.spec, self.k, self.retriever, self.ad_field = spec, k, retriever, ad_field
        self.transform = transform or RewardTransform()
        self.format_penalty = float(format_penalty)
        self.sample_weight = float(sample_weight)
        self.batch_weight = float(batch_weight)
        if self.batch_weight < 0 or self.sample_weight < 0 or not (self.batch_weight or self.sample_weight):
            raise RLConfigError(f"`batch_weight` and `sample_weight` must be >= 0 with one > 0, got "
                                f"{batch_weight} and {sample_weight}")
        self._base_cache: dict[tuple[str, ...], float] = {}
        self._score_one = recall_at_k if metric == "recall" else ndcg_at_k
        self.ad_ids = list(ads)
        self._index = {a: j for j, a in enumerate(self.ad_ids)}
        self.docs = [ads[a] for a in self.ad_ids]
        self.heldout = {q: list(rel) for q, rel in heldout.items()}
        self.by_ad: dict[str, list[str]] = {}
        for q, rel in self.heldout.items():
            for a in rel:
                self.by_ad.setdefault(a, []).append(q)
        self.name = f"retrieval:{retriever}:{metric}@{k}"
        if retriever == "bm25":
            self._bm25 = _ExpandableBM25(self.docs)
        else:
            if encoder is None:
                from adnanny_eval.encoders import minilm_encoder
                encoder = minilm_encoder()
            self._encode = encoder
            self._doc_emb = self._unit(np.asarray(encoder(self.docs), dtype=np.float64))      # [D, d]
            self._query_emb = dict(zip(self.heldout, self._unit(np.asarray(encoder(list(self.heldout)),
                                                                           dtype=np.float64)), strict=True))

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)

    def metric(self, expansions: Mapping[str, Sequence[str]], queries: Sequence[str]) -> float:
        """Mean metric@K of `queries` when each ad's document is extended with `expansions[ad]`."""
        if not queries:
            return 0.0
        if self.retriever == "bm25":
            scores = self._bm25.scores({self._index[a]: qs for a, qs in expansions.items()}, queries)  # [Q, D]
        else:
            emb = self._doc_emb.copy()
            for a, qs in expansions.items():
                if qs:
                    j = self._index[a]
                    # doc2query for a dense index: the document vector moves towards its injected queries.
                    extra = self._unit(np.asarray(self._encode(list(qs)), dtype=np.float64))
                    emb[j] = self._unit((emb[j] + extra.sum(axis=0))[None, :])[0]
            scores = np.stack([self._query_emb[q] for q in queries]) @ emb.T                      # [Q, D]
        top = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        # A BM25 score of 0 shares no term with the query: such an ad was not retrieved (no tie-break luck).
        floor = 0.0 if self.retriever == "bm25" else -np.inf
        vals = [self._score_one([self.ad_ids[j] for j in row if scores[i, j] > floor], self.heldout[q], self.k)
                for i, (q, row) in enumerate(zip(queries, top, strict=True))]
        return float(np.mean(vals))

    def base_metric(self, queries: Sequence[str]) -> float:
        """M_base of `queries` (nothing injected), memoised: the catalog and the retriever are frozen, so it never
        changes during a run — a held-out evaluation scores ~10^3 completions, each against its ad's queries."""
        key = tuple(queries)
        if key not in self._base_cache:
            self._base_cache[key] = self.metric({}, queries)
        return self._base_cache[key]

    def __call__(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *, group_size: int
                 ) -> RewardOutput:
        from adnanny_cook.errors import ParseError

        n = len(completions)
        if n % group_size:
            raise RLConfigError(f"{n} completions are not whole groups of `group_size`={group_size}")
        generated: list[list[str]] = []
        parsed: list[float] = []
        for text in completions:
            try:
                generated.append(self.spec.parse_generation(text))
                parsed.append(1.0)
            except ParseError:
                generated.append([])
                parsed.append(0.0)
        total = [0.0] * n
        gain = [0.0] * n
        for rows_j in reward_batches(n // group_size, group_size):
            expansions: dict[str, list[str]] = {}
            for i in rows_j:
                ad = str(rows[i][self.ad_field])
                if ad not in self.by_ad and ad not in self.ad_ids:
                    raise RLConfigError(f"row {i}: `{self.ad_field}`={ad!r} is not in the retriever's catalog")
                expansions.setdefault(ad, []).extend(generated[i])
            if self.batch_weight:
                queries = sorted({q for a in expansions for q in self.by_ad.get(a, ())})
                delta = self.metric(expansions, queries) - self.base_metric(queries)
                r = self.batch_weight * self.transform(delta)
            else:
                delta = r = 0.0
            for i in rows_j:
                gain[i] = delta
                total[i] = r + (0.0 if parsed[i] else self.format_penalty)
        comps = {"metric_gain": gain, "parsed": parsed}
        if self.sample_weight:
            own = [0.0] * n
            for i in range(n):
                ad = str(rows[i][self.ad_field])
                qs = self.by_ad.get(ad, [])
                if not qs or not generated[i]:
                    continue
                own[i] = self.metric({ad: generated[i]}, qs) - self.base_metric(qs)
                total[i] += self.sample_weight * self.transform(own[i])
            comps["own_gain"] = own
        return RewardOutput(total=total, components=comps)
