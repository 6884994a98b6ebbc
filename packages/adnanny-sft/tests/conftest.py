"""Shared fixtures: cook's sample world (built once per session) and tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """adnanny-cook's sample world (corpus with golden rationales, golden sets, tokenizer), seed 0."""
    from adnanny_cook.sample import make_sample

    out = tmp_path_factory.mktemp("sample")
    make_sample(out, 0)
    return out


@pytest.fixture(scope="session")
def tokenizer(sample_dir: Path):
    from adnanny_sft.models import load_tokenizer

    return load_tokenizer(sample_dir / "tokenizer")


@pytest.fixture(scope="session")
def corpus_rows(sample_dir: Path) -> list[dict]:
    from adnanny_sft.data import read_rows

    return read_rows(sample_dir / "corpus", split="train")



@pytest.fixture(scope="session")
def small_corpus(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 48-row slice of cook's sample corpus (same rows, same schema) for fast loop tests."""
    from adnanny_cook.corpus import read_corpus, write_corpus

    df = read_corpus(sample_dir / "corpus")
    train = [r for r in df.to_dicts() if r["split"] == "train" and r["task"] in ("query_ad", "ad_user")][:40]
    held = [r for r in df.to_dicts() if r["split"] == "eval" and r["task"] in ("query_ad", "ad_user")][:8]
    out = tmp_path_factory.mktemp("small_corpus")
    write_corpus(train + held, out)
    return out
