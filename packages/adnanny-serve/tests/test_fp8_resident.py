"""FP8 weights that stay FP8 (`fp8_weights="keep"`): same outputs as the dequantized model, ~1/2 of BF16 weight
memory, no full-precision copy held, ragged blocks, MoE experts, weight updates, the CPU fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from adnanny_ckpt.safetensors_io import HFCheckpointReader
from adnanny_serve.engines import SamplingParams
from adnanny_serve.engines.transformers_engine import TransformersEngine
from adnanny_serve.fp8_linear import FP8Experts, FP8Linear, fp8_backends, load_fp8_resident, weight_bytes
from adnanny_serve.fp8_load import load_fp8_dequantized

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: keep (per-layer dequantize in the forward) vs dequantize-at-load on CPU: the same codec and the same matmuls,
#: only the fused vs per-projection expert matmuls differ in summation order -> float32 round-off only
ATOL = 1e-5


@pytest.fixture(scope="module")
def ragged_fp8(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeepSeek-V3 whose hidden size (192 = 1.5 blocks) and MoE width are not whole 128-blocks."""
    from adnanny_serve.quantize import quantize_checkpoint
    from adnanny_serve.tiny import build_tiny_deepseek

    bf16 = build_tiny_deepseek(tmp_path_factory.mktemp("m") / "ragged-bf16", sample_dir / "tokenizer",
                               hidden_size=192, seed=1, num_hidden_layers=2)
    out = tmp_path_factory.mktemp("m") / "ragged-fp8"
    quantize_checkpoint(bf16, out)
    return out


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 17, 33, 2, 90, 11, 7, 8, 61, 3], [9, 9, 40, 12, 5, 70, 1, 2, 3, 4]])


@pytest.mark.parametrize("which", ["tiny_fp8", "ragged_fp8"])
def test_keep_equals_dequantized_model(which: str, request) -> None:
    path = request.getfixturevalue(which)
    keep, deq = load_fp8_resident(path), load_fp8_dequantized(path)
    with torch.no_grad():
        a, b = keep(_ids()).logits, deq(_ids()).logits
    assert torch.allclose(a, b, atol=ATOL, rtol=0), float((a - b).abs().max())
    fp8_layers = [m for m in keep.modules() if isinstance(m, FP8Linear)]
    assert fp8_layers and any(isinstance(m, FP8Experts) for m in keep.modules())
    # every FP8 tensor of the checkpoint sits in the model as FP8, ragged grids included
    with HFCheckpointReader(path) as r:
        ck = {n: r.get(n) for n in r.names() if r.is_fp8(n)}
        scales = {n: r.get(n + "_scale_inv") for n in ck}
    sd = keep.state_dict()
    assert all(sd[n].dtype == torch.float8_e4m3fn and torch.equal(sd[n].view(torch.uint8), t.view(torch.uint8))
               for n, t in ck.items())
    assert all(torch.equal(sd[n + "_scale_inv"], s) for n, s in scales.items())
    if which == "ragged_fp8":
        assert any(m.in_features % 128 or m.out_features % 128 for m in fp8_layers)
    assert fp8_backends(keep) == {"layers": len(fp8_layers), "scaled_mm": 0, "dequantize": len(fp8_layers),
                                  "fallbacks": {}}


def test_weight_memory_is_half_of_bf16_and_no_full_precision_copy(ragged_fp8: Path) -> None:
    keep = load_fp8_resident(ragged_fp8, dtype=torch.bfloat16)
    deq = load_fp8_dequantized(ragged_fp8, dtype=torch.bfloat16)
    kb, db = weight_bytes(keep), weight_bytes(deq)
    fp8_numel = sum(m.weight.numel() for m in keep.modules() if isinstance(m, FP8Linear))
    assert kb["fp8"] == fp8_numel  # one byte per FP8 weight
    # the quantized weights: 1 byte + 4 bytes per 128x128 block vs 2 bytes in BF16 -> ratio 0.5 + scales
    ratio = (kb["fp8"] + kb["scales"]) / (2 * fp8_numel)
    assert 0.5 <= ratio < 0.51, ratio
    # and nothing else: the rest of the model is byte for byte what the BF16 model holds besides those weights
    assert kb["other"] == db["total"] - 2 * fp8_numel
    print(f"weight bytes: FP8-resident {kb['total']} vs BF16 {db['total']} (x{kb['total'] / db['total']:.3f}); "
          f"quantized linears x{ratio:.4f}")
    before = {n: (t.dtype, t.data_ptr()) for n, t in [*keep.named_parameters(), *keep.named_buffers()]}
    with torch.no_grad():
        keep(_ids())
    after = {n: (t.dtype, t.data_ptr()) for n, t in [*keep.named_parameters(), *keep.named_buffers()]}
    # a forward keeps no dequantized weight around: the same tensors, the same bytes
    assert after == before and weight_bytes(keep) == kb
    assert not any(t.dtype in (torch.bfloat16, torch.float32) and t.dim() == 2 and name.endswith("proj.weight")
                   for name, t in keep.state_dict().items())


def test_engine_keep_mode_generates_like_dequantize(tiny_fp8: Path, tiny_engine) -> None:
    eng = TransformersEngine.from_pretrained(tiny_fp8, batch_size=4, fp8_weights="keep")
    assert eng.fp8_weights == "keep" and tiny_engine.fp8_weights == "dequantize"  # CPU default: dequantize
    prompts = [eng.apply_chat_template([{"role": "user", "content": t}]) for t in ("cheap hotel", "ad title x y")]
    p = SamplingParams(max_tokens=8, temperature=0.0)
    assert [g.text for g in eng.generate(prompts, p)] == [g.text for g in tiny_engine.generate(prompts, p)]
    # an RL-style full-precision weight update is re-quantized with its block scales (not copied bit-wise)
    name = next(n for n, t in eng.model.state_dict().items() if t.dtype == torch.float8_e4m3fn)
    new = torch.randn(tuple(eng.model.state_dict()[name].shape)) * 0.02
    eng.load_weights({name: new})
    sd = eng.model.state_dict()
    from adnanny_ckpt.fp8 import dequantize_blocks

    back = dequantize_blocks(sd[name], sd[name + "_scale_inv"], out_dtype=torch.float32)
    assert (back - new).abs().max() <= new.abs().max() / 8


def test_scaled_mm_falls_back_on_cpu_with_the_reason() -> None:
    lin = FP8Linear(192, 72, bias=True, backend="scaled_mm")
    from adnanny_ckpt.fp8 import quantize_blocks

    w = torch.randn(72, 192)
    q, s = quantize_blocks(w)
    lin.weight.copy_(q)
    lin.weight_scale_inv.copy_(s)
    x = torch.randn(3, 192)
    y = lin(x)  # the CPU has no blockwise FP8 matmul: this layer dequantizes from now on, and says why
    assert lin.active_backend == "dequantize" and lin.fallback_reason
    assert torch.allclose(y, x @ lin.dequantized_weight(torch.float32).T + lin.bias, atol=1e-5)
    assert FP8Linear(192, 72).active_backend == "dequantize"  # auto on CPU
    with pytest.raises(Exception, match="`backend` must be"):
        FP8Linear(8, 8, backend="fast")


def test_keep_refused_by_name_for_transformers_loader(tiny_fp8: Path) -> None:
    from adnanny_serve.errors import ConfigError

    with pytest.raises(ConfigError, match="`fp8_weights` must be 'keep' or 'dequantize'; got 'half'"):
        TransformersEngine.from_pretrained(tiny_fp8, fp8_weights="half")
    with pytest.raises(ConfigError, match="needs `fp8_loader='adnanny'`"):
        TransformersEngine.from_pretrained(tiny_fp8, fp8_weights="keep", fp8_loader="transformers")
