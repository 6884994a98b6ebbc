"""The Megatron backend against adnanny-sft's conformance kit (run in a fresh pytest process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_megatron_backend_conforms_to_sft_protocol() -> None:
    here = Path(__file__).parent
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", str(here / "megatron_conformance.py"), "-q", "-p", "no:cacheprovider",
         "-W", "ignore", "-o", "addopts="],
        capture_output=True, text=True, env=env, timeout=300, cwd=here,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    from adnanny_sft.testing import TrainingBackendConformance

    n = sum(name.startswith("test_") for name in dir(TrainingBackendConformance))  # every clause of the kit ran
    assert n >= 11 and f"{n} passed" in res.stdout, res.stdout[-2000:]


def test_batch_not_divisible_by_dp_times_micro_batch(run_py) -> None:
    code = r'''
import torch
from adnanny_sft.testing import make_batch, tiny_llama_config
from adnanny_megatron import parallel, provider
from adnanny_megatron.backend import MegatronBackend, TrainSettings
from adnanny_megatron.errors import AdNannyMegatronError
from adnanny_megatron.optim import OptimSettings
parallel.initialize(parallel.Sizes())
spec = provider.transformer_config_from_hf(tiny_llama_config(64), bf16=False)
be = MegatronBackend(spec, OptimSettings(), TrainSettings(micro_batch_size=2), seed=0)
try:
    be.forward_backward(make_batch(64, batch=3))
except AdNannyMegatronError as exc:
    assert "batch size 3 must be a multiple of" in str(exc) and "`micro_batch_size` (2)" in str(exc)
    print("ok")
'''
    assert run_py(code).stdout.strip().endswith("ok")
