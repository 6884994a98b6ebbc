"""Shared fixtures: a tiny DeepSeek-V3 HF checkpoint (adnanny-ckpt's synthetic writer) and CLI runners.

Everything that builds megatron modules runs in subprocesses: megatron's CUDA->CPU shim is a
process-wide TorchFunctionMode and must not leak into the pytest process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real HF DeepSeek-V3 dir (bf16 weights): MLA, 1 dense + 3 MoE layers, 8 experts, YaRN."""
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config, write_synthetic_checkpoint

    out = tmp_path_factory.mktemp("tiny-dsv3") / "hf"
    write_synthetic_checkpoint(out, tiny_deepseek_v3_config(fp8=False), dtype="bf16", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_mcore(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """adnanny-ckpt's torch_dist conversion of ``tiny_hf`` in layout TP1/PP1/EP1 (the release dir)."""
    from adnanny_ckpt import hf_to_mcore

    out = tmp_path_factory.mktemp("tiny-mcore") / "mcore"
    hf_to_mcore(str(tiny_hf), str(out), make_vocab_size_divisible_by=1, progress=False)
    return out / "release"


def _run_py(code: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run python code in a fresh interpreter; fails the test with the output when it fails."""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=timeout)
    if res.returncode != 0:
        pytest.fail(f"subprocess failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def _run_cli(args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "adnanny_megatron.cli", *args], capture_output=True, text=True,
                         env=ENV, timeout=timeout)
    if check and res.returncode != 0:
        pytest.fail(f"adnanny-megatron {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                    f"{res.stderr[-5000:]}")
    return res


def _last_json(text: str) -> dict:
    """The JSON object printed on stdout (progress bars may precede it)."""
    return json.loads(text[text.index("{"):])


@pytest.fixture
def run_py():
    return _run_py


@pytest.fixture
def run_cli():
    return _run_cli


@pytest.fixture
def last_json():
    return _last_json
