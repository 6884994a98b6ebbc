"""The process-group timeout is configurable (minutes) and reaches torch's and megatron's groups."""

from __future__ import annotations

import inspect

import pytest

from adnanny_megatron import parallel
from adnanny_megatron.train import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore")


def test_default_is_thirty_minutes_everywhere() -> None:
    assert parallel.DEFAULT_TIMEOUT_MINUTES == 30.0
    assert inspect.signature(parallel.initialize).parameters["timeout_minutes"].default == 30.0
    assert TrainConfig().timeout_minutes == 30.0


def test_bad_timeout_is_refused() -> None:
    from adnanny_megatron.errors import AdNannyMegatronError

    with pytest.raises(AdNannyMegatronError, match=r"`timeout_minutes` must be > 0, got 0"):
        TrainConfig(timeout_minutes=0)


def test_timeout_reaches_the_process_groups(run_py) -> None:
    code = """
import warnings; warnings.simplefilter('ignore')
import torch
from megatron.core import parallel_state as ps
from torch.distributed import distributed_c10d as c10d
from adnanny_megatron import parallel
parallel.initialize(parallel.Sizes(), timeout_minutes=7)
cpu = torch.device('cpu')
groups = {'default': c10d._get_default_group(), 'dp': ps.get_data_parallel_group(),
          'pp': ps.get_pipeline_model_parallel_group(), 'ep': ps.get_expert_model_parallel_group()}
print({k: g._get_backend(cpu).options._timeout.total_seconds() for k, g in groups.items()})
"""
    out = run_py(code).stdout.strip().splitlines()[-1]
    assert out == "{'default': 420.0, 'dp': 420.0, 'pp': 420.0, 'ep': 420.0}"
