import pytest
import torch

from adnanny_ckpt.errors import CheckpointFormatError
from adnanny_ckpt.fp8 import dequantize_blocks, keeps_bf16, quantize_blocks, scale_shape


@pytest.mark.parametrize("shape", [(256, 384), (576, 200), (80, 128), (130, 1), (1, 300)])
def test_quantize_dequantize_within_fp8_step(shape):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    q, s = quantize_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
    assert tuple(s.shape) == scale_shape(shape) == (-(-shape[0] // 128), -(-shape[1] // 128))
    back = dequantize_blocks(q, s).float()
    sfull = s.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    err = (back - w.float()).abs()
    assert (err <= w.float().abs() / 16 + sfull * 2**-9 + 1e-6).all()
    # each block's amax is representable exactly: the max element maps to +-448 -> error only from bf16 rounding
    assert err.max() > 0  # FP8 is lossy: a codec that returned its input would fail here


def test_ragged_edge_blocks_use_their_own_scale():
    w = torch.zeros(200, 130)
    w[150:, 129] = 3.0  # only in the ragged corner block (1, 1)
    w[0, 0] = 0.5
    q, s = quantize_blocks(w)
    assert s.shape == (2, 2)
    assert s[1, 1].item() == pytest.approx(3.0 / 448)
    assert s[0, 0].item() == pytest.approx(0.5 / 448)
    assert s[0, 1].item() == 1.0 and s[1, 0].item() == 1.0  # all-zero blocks
    assert torch.equal(dequantize_blocks(q, s, out_dtype=torch.float32), w)


def test_dequant_matches_elementwise_definition():
    g = torch.Generator().manual_seed(3)
    raw = torch.randint(0, 256, (300, 260), generator=g, dtype=torch.uint8)
    raw[(raw & 0x7F) == 0x7F] = 0
    q = raw.view(torch.float8_e4m3fn)
    s = torch.rand(3, 3, generator=g) * 1e-3
    ref = q.float() * s.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :260]
    assert torch.equal(dequantize_blocks(q, s), ref.to(torch.bfloat16))


def test_dequant_equals_transformers_bit_for_bit():
    fg = pytest.importorskip("transformers.integrations.finegrained_fp8")
    g = torch.Generator().manual_seed(4)
    raw = torch.randint(0, 256, (384, 256), generator=g, dtype=torch.uint8)
    raw[(raw & 0x7F) == 0x7F] = 0
    q = raw.view(torch.float8_e4m3fn)
    s = torch.rand(3, 2, generator=g) * 1e-3 + 1e-6
    # transformers' load-time dequantizer (grid must divide the weight there)
    ref = fg.Fp8Dequantize(None)._dequantize_one(q, s, output_dtype=torch.bfloat16)
    assert torch.equal(dequantize_blocks(q, s), ref)
    # ragged shapes: transformers' backward-pass dequantizer handles them; fp32 then one rounding, as ours
    qr, sr = q[:300, :200].contiguous(), s
    ref_r = fg._dequantize_fp8_weight(qr, sr, [128, 128], torch.float32).to(torch.bfloat16)
    assert torch.equal(dequantize_blocks(qr, sr), ref_r)


def test_dequant_rejects_wrong_scale_shape_and_dtype():
    q = torch.zeros(200, 130, dtype=torch.float8_e4m3fn)
    with pytest.raises(CheckpointFormatError, match=r"`scale_inv` has shape \(1, 1\).*needs \[2, 2\]"):
        dequantize_blocks(q, torch.ones(1, 1), name="x.weight")
    with pytest.raises(CheckpointFormatError, match="expected dtype float8_e4m3fn"):
        dequantize_blocks(torch.zeros(4, 4, dtype=torch.bfloat16), torch.ones(1, 1))


def test_quantize_rejects_nan():
    w = torch.zeros(4, 4)
    w[1, 1] = float("nan")
    with pytest.raises(CheckpointFormatError, match="inf/nan"):
        quantize_blocks(w, name="bad")


@pytest.mark.parametrize(
    "name,bf16",
    [
        ("model.embed_tokens.weight", True),
        ("lm_head.weight", True),
        ("model.norm.weight", True),
        ("model.layers.3.input_layernorm.weight", True),
        ("model.layers.3.self_attn.kv_a_layernorm.weight", True),
        ("model.layers.3.mlp.gate.weight", True),
        ("model.layers.3.mlp.gate.e_score_correction_bias", True),
        ("model.layers.61.shared_head.head.weight", True),
        ("model.layers.61.enorm.weight", True),
        ("model.layers.61.eh_proj.weight", False),
        ("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", False),
        ("model.layers.3.self_attn.q_b_proj.weight", False),
        ("model.layers.3.mlp.experts.17.gate_proj.weight", False),
        ("model.layers.3.mlp.shared_experts.down_proj.weight", False),
        ("model.layers.0.mlp.up_proj.weight", False),
    ],
)
def test_keeps_bf16_follows_deepseek_release(name, bf16):
    assert keeps_bf16(name) is bf16
