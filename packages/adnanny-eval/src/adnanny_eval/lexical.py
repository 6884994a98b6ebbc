"""A frozen lexical matcher: Okapi BM25 over ad texts (used by the Difficulty metric of Table 6).

Frozen means nothing is learned from the queries being judged: the index is built from the ad texts alone,
with fixed parameters k1 = 1.2, b = 0.75, the BM25+-style non-negative idf
``ln(1 + (N − df + 0.5) / (df + 0.5))``, and a fixed tokenizer (lower-case ASCII letters/digits runs).
Scoring is a dense matrix product in numpy: [queries × vocab] term counts times [vocab × docs] weights
(ad sets here are thousands of texts at most; a larger pool would want scipy.sparse).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from adnanny_eval.errors import AdNannyEvalError

__all__ = ["BM25Index", "tokenize"]

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case alphanumeric runs: ``"CLT Airport-Parking!"`` -> ``["clt", "airport", "parking"]``."""
    return _TOKEN.findall(text.lower())


class BM25Index:
    """BM25 index over a fixed list of documents; `scores(queries)` -> [n_queries, n_docs]."""

    def __init__(self, documents: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> None:
        if len(documents) == 0:
            raise AdNannyEvalError("`documents` is empty; BM25 needs at least one ad text to index")
        if k1 < 0 or not 0 <= b <= 1:
            raise AdNannyEvalError(f"BM25 needs `k1` >= 0 and 0 <= `b` <= 1, got k1={k1}, b={b}")
        self.k1, self.b = k1, b
        docs = [tokenize(d) for d in documents]
        self.vocab: dict[str, int] = {}
        for toks in docs:
            for t in toks:
                self.vocab.setdefault(t, len(self.vocab))
        n_docs, n_terms = len(docs), len(self.vocab)
        tf = np.zeros((n_terms, n_docs), dtype=np.float64)  # [V, D] term counts
        for j, toks in enumerate(docs):
            for t in toks:
                tf[self.vocab[t], j] += 1
        df = (tf > 0).sum(axis=1)  # [V]
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))  # [V]
        lengths = np.array([len(t) for t in docs], dtype=np.float64)  # [D]
        avg = lengths.mean() if lengths.mean() > 0 else 1.0
        norm = k1 * (1 - b + b * lengths / avg)  # [D]
        self.weights = idf[:, None] * tf * (k1 + 1) / (tf + norm[None, :])  # [V, D]
        self.n_docs = n_docs

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every query against every document, [n_queries, n_docs]."""
        q = np.zeros((len(queries), len(self.vocab)), dtype=np.float64)  # [Q, V] query term counts
        for i, text in enumerate(queries):
            for t in tokenize(text):
                j = self.vocab.get(t)
                if j is not None:
                    q[i, j] += 1
        return q @ self.weights  # [Q, D]
