"""The compatibility layer, checked in fresh interpreters (its CUDA->CPU mode is process-wide)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def test_cpu_shims_and_te_fixes(run_py) -> None:
    code = r'''
import torch
from adnanny_megatron import compat
assert not compat.cpu_mode_active()
compat.apply(); compat.apply()  # idempotent
assert compat.cpu_mode_active() and not compat.have_te()
t = torch.zeros(3, device="cuda")
assert t.device.type == "cpu"
assert torch.ones(2).cuda().device.type == "cpu"
assert torch.ones(2).to("cuda").device.type == "cpu"
assert torch.ones(2).type() == "torch.cuda.FloatTensor"
assert torch.ones(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
assert torch.cuda.current_device() == "cpu"
s = torch.cuda.Stream(); e = torch.cuda.Event(); e.record(s); s.wait_event(e); torch.cuda.synchronize()
with torch.cuda.stream(s):
    pass
import megatron.core.transformer.multi_latent_attention as mla
import megatron.core.transformer.moe.moe_utils as mu
assert mla.HAVE_TE is False and mu.te_general_gemm is None
print("ok")
'''
    assert run_py(code).stdout.strip().endswith("ok")


def test_mla_attention_rejects_mismatched_kv_channels(run_py) -> None:
    code = r'''
from adnanny_ckpt.synthetic import tiny_deepseek_v3_config
from adnanny_megatron import compat, parallel, provider
from adnanny_megatron.errors import AdNannyMegatronError
parallel.initialize(parallel.Sizes())
spec = provider.transformer_config_from_hf(tiny_deepseek_v3_config(fp8=False), bf16=False)
from megatron.core.transformer.enums import AttnMaskType
cls = compat.MLADotProductAttention
ok = cls(config=spec.config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
         softmax_scale=None, k_channels=48, v_channels=spec.config.kv_channels)
assert abs(ok.softmax_scale - 48 ** -0.5) < 1e-12
try:
    cls(config=spec.config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self",
        k_channels=48, v_channels=spec.config.kv_channels + 1)
except AdNannyMegatronError as exc:
    assert "`kv_channels` == `v_head_dim`" in str(exc)
    print("ok")
'''
    assert run_py(code).stdout.strip().endswith("ok")
