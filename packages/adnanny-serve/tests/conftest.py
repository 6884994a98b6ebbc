"""Shared fixtures: the cook sample world, a tiny DeepSeek-V3 (BF16 and our FP8 export), SmolLM2."""

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


@pytest.fixture(scope="session")
def tiny_bf16(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_serve.tiny import build_tiny_deepseek

    return build_tiny_deepseek(tmp_path_factory.mktemp("m") / "tiny-bf16", sample_dir / "tokenizer", seed=0)


@pytest.fixture(scope="session")
def tiny_fp8(tiny_bf16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from adnanny_serve.quantize import quantize_checkpoint

    out = tmp_path_factory.mktemp("m") / "tiny-fp8"
    quantize_checkpoint(tiny_bf16, out)
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_fp8: Path):
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(tiny_fp8, batch_size=4)


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from adnanny_ckpt.gguf import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def smol_engine(smol_dir: Path):
    from adnanny_serve.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(smol_dir, batch_size=8)


@pytest.fixture(scope="session")
def query_ad_rows(sample_dir: Path):
    import polars as pl

    return pl.read_parquet(sample_dir / "query_ad.parquet")
