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
    assert n >= 11 and f"{2 * n} passed" in res.stdout, res.stdout[-2000:]  # local and SDPA attention


def test_micro_batch_size_is_an_upper_bound(run_py) -> None:
    """micro_batch_size 2 with a batch of 3 runs as 3 x 1 and gives the same values as micro_batch_size 1; only
    the data-parallel split must be exact (checked with the error's wording)."""
    code = r'''
import torch
from adnanny_sft.testing import make_batch, tiny_llama_config
from adnanny_megatron import parallel, provider
from adnanny_megatron.backend import MegatronBackend, TrainSettings
from adnanny_megatron.optim import OptimSettings
parallel.initialize(parallel.Sizes())
spec = provider.transformer_config_from_hf(tiny_llama_config(64), bf16=False)
a = MegatronBackend(spec, OptimSettings(), TrainSettings(micro_batch_size=2), seed=0)
b = MegatronBackend(spec, OptimSettings(), TrainSettings(micro_batch_size=1), seed=0)
assert a._local_slice(make_batch(64, batch=3))[2:] == (3, 1)
assert a._local_slice(make_batch(64, batch=4))[2:] == (2, 2)
x, y = a.forward_backward(make_batch(64, batch=3)), b.forward_backward(make_batch(64, batch=3))
assert torch.allclose(x, y, atol=1e-6), (x, y)
a.dp_size = 2
try:
    a._local_slice(make_batch(64, batch=3))
except Exception as exc:
    assert "batch size 3 must be a multiple of the data-parallel size (2)" in str(exc)
    print("ok")
'''
    assert run_py(code).stdout.strip().endswith("ok")


def test_sdpa_attention_equals_local(run_py) -> None:
    """SDPA core attention == megatron's local attention (fp32), for MLA (q/k dim != v dim) and GQA, with right
    padding (no mask is built: causal kernel) and left padding (dense mask), incl. gradients."""
    code = r'''
import warnings; warnings.simplefilter('ignore')
import torch
from adnanny_ckpt.synthetic import tiny_deepseek_v3_config
from adnanny_sft.backend import Batch
from adnanny_sft.testing import tiny_llama_config
from adnanny_megatron import parallel, provider
from adnanny_megatron.backend import MegatronBackend, TrainSettings, _masks
from adnanny_megatron.optim import OptimSettings
parallel.initialize(parallel.Sizes())
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 64, (2, 10), generator=g)
right = torch.ones(2, 10, dtype=torch.long); right[1, 7:] = 0
left = torch.ones(2, 10, dtype=torch.long); left[1, :3] = 0
assert _masks(right)[1] is None and _masks(left)[1] is not None
worst = 0.0
for cfg in (tiny_deepseek_v3_config(fp8=False, vocab_size=64, num_hidden_layers=2), tiny_llama_config(64)):
    out = {}
    for kind in ("local", "sdpa"):
        spec = provider.transformer_config_from_hf(cfg, bf16=False, core_attention=kind)
        be = MegatronBackend(spec, OptimSettings(lr=1e-2), TrainSettings(micro_batch_size=2), seed=0)
        res = []
        for am in (right, left):
            b = Batch(input_ids=ids, attention_mask=am, loss_mask=am.float(), sample_weights=torch.ones(2))
            res.append(be.token_logprobs(b))
            res.append(be.forward_backward(b))
        be.optimizer_step()
        res.append(be.per_sample_nll(Batch(input_ids=ids, attention_mask=right, loss_mask=right.float(),
                                           sample_weights=torch.ones(2))))  # after one identical update
        out[kind] = res
    for a, b in zip(out["local"], out["sdpa"]):
        assert torch.isfinite(b).all()
        worst = max(worst, float((a - b).abs().max() / max(1.0, float(a.abs().max()))))
print("WORST", worst)
'''
    out = run_py(code).stdout
    worst = float(out.split("WORST")[1].split()[0])
    assert worst < 1e-5, out


def test_grouped_gemm_experts_match_sequential(tiny_mcore, tiny_hf, run_py) -> None:
    """megatron's GroupedMLP on our torch grouped GEMM (bf16; on CPU the per-expert path) loads the same converted
    checkpoint as SequentialMLP and gives the same per-sample NLL within bf16 rounding; it trains (expert grads)."""
    code = f"""
import warnings; warnings.simplefilter('ignore')
import torch
from adnanny_sft.backend import Batch
from adnanny_megatron import parallel, provider
from adnanny_megatron.backend import MegatronBackend, TrainSettings
from adnanny_megatron.optim import OptimSettings
parallel.initialize(parallel.Sizes())
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 512, (2, 12), generator=g)
b = Batch(input_ids=ids, attention_mask=torch.ones(2, 12, dtype=torch.long), loss_mask=torch.ones(2, 12),
          sample_weights=torch.ones(2))
vals, kinds = [], []
for grouped in (False, True):
    spec = provider.transformer_config_from_hf({str(tiny_hf)!r}, bf16=True, moe_grouped_gemm=grouped,
                                               make_vocab_size_divisible_by=1)
    be = MegatronBackend(spec, OptimSettings(lr=1e-3), TrainSettings(micro_batch_size=2), seed=0)
    be.load_model_weights({str(tiny_mcore)!r})
    kinds.append(type(be.model[0].module.decoder.layers[1].mlp.experts).__name__)
    vals.append(be.per_sample_nll(b))
    be.forward_backward(b)
    if grouped:
        w = be.model[0].module.decoder.layers[1].mlp.experts.weight1
        gnorm = float(w.main_grad.norm())
print("KINDS", kinds, "REL", float(((vals[0] - vals[1]).abs() / vals[0].abs()).max()), "GRAD", gnorm)
"""
    out = run_py(code).stdout
    assert "KINDS ['SequentialMLP', 'GroupedMLP']" in out, out
    rel = float(out.split("REL")[1].split()[0])
    grad = float(out.split("GRAD")[1].split()[0])
    assert rel < 2e-2 and grad > 0, out
