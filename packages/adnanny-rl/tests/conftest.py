"""Shared fixtures: the sample world (corpus, catalog, click logs, tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_cook.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out, seed=0)
    return out
