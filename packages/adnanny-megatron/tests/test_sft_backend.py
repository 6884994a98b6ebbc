"""The `adnanny_sft.backends` entry point: adnanny-sft builds the Megatron backend from plain arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from adnanny_megatron.errors import AdNannyMegatronError

pytestmark = pytest.mark.filterwarnings("ignore")


def test_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    from adnanny_megatron.sft_backend import build_megatron_backend

    eps = {e.name: e for e in entry_points(group="adnanny_sft.backends")}
    assert "megatron" in eps, "reinstall adnanny-megatron (pip install -e) to register its entry point"
    assert eps["megatron"].load() is build_megatron_backend


def test_bad_arguments_are_refused() -> None:
    from adnanny_megatron.sft_backend import build_megatron_backend, resolve_device

    with pytest.raises(AdNannyMegatronError, match=r"`device` must be cpu, cuda or auto, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(AdNannyMegatronError, match=r"set `lora = false`"):
        build_megatron_backend({}, lora=object())
    with pytest.raises(AdNannyMegatronError, match=r"`dtype` 'float16' unsupported"):
        build_megatron_backend({}, dtype="float16")


def test_factory_loads_hf_weights_and_matches_hf_nll(tiny_hf: Path, tmp_path: Path, run_py) -> None:
    """Built through the entry point from an HF dir: converted by adnanny-ckpt, loaded, and its per-sample NLL
    equals transformers' on the same batch (fp32); one training step runs."""
    code = f"""
import warnings; warnings.simplefilter('ignore')
from importlib.metadata import entry_points
import torch
from transformers import AutoModelForCausalLM
from adnanny_sft.backend import Batch
factory = {{e.name: e for e in entry_points(group='adnanny_sft.backends')}}['megatron'].load()
be = factory({str(tiny_hf)!r}, dtype='float32', seed=0, device='cpu', lr=1e-3, total_steps=2,
             convert_dir={str(tmp_path / 'mc')!r})
g = torch.Generator().manual_seed(0)
ids = torch.randint(0, 512, (2, 12), generator=g)
lm = torch.zeros(2, 12); lm[:, 6:] = 1.0
b = Batch(input_ids=ids, attention_mask=torch.ones(2, 12, dtype=torch.long), loss_mask=lm,
          sample_weights=torch.full((2,), 0.5))
got = be.per_sample_nll(b)
hf = AutoModelForCausalLM.from_pretrained({str(tiny_hf)!r}, torch_dtype=torch.float32).eval()
with torch.no_grad():
    logp = torch.log_softmax(hf(ids).logits.float(), -1)
tok = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
ref = -(tok * lm[:, 1:]).sum(1) / lm[:, 1:].sum(1)
print('DIFF', float((got - ref).abs().max()), float(ref.abs().max()))
be.forward_backward(b); print('STEP', be.optimizer_step()['skipped'])
"""
    out = run_py(code).stdout
    diff, scale = (float(x) for x in out.split("DIFF")[1].split()[:2])
    assert diff <= 1e-4 * max(1.0, scale), out
    assert "STEP 0.0" in out
