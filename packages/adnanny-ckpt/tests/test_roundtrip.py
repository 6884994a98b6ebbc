"""HF -> megatron -> HF round trips on the tiny DeepSeek-V3 (MLA, 1 dense + 3 MoE, MTP) in several layouts."""

import json

import pytest
import torch

from adnanny_ckpt import hf_to_mcore, mcore_to_hf, verify
from adnanny_ckpt.fp8 import keeps_bf16
from adnanny_ckpt.safetensors_io import HFCheckpointReader

LAYOUTS = [
    dict(pp=2),
    dict(ep=2),
    dict(pp=2, ep=2),
    dict(tp=2),
    dict(pp=2, ep=2, tp=2, te_names=True),
]


def _same(a_dir, b_dir):
    a, b = HFCheckpointReader(a_dir), HFCheckpointReader(b_dir)
    assert a.names() == b.names()
    for n in a.names():
        x, y = a.get(n), b.get(n)
        assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8) if x.dtype.itemsize == 1 else x,
                                                  y.view(torch.uint8) if y.dtype.itemsize == 1 else y), n


CASES = [pytest.param(lay, "torch_dist", id="torch_dist-" + "-".join(f"{k}{v}" for k, v in lay.items())) for lay in LAYOUTS]
CASES += [pytest.param(lay, "legacy", id="legacy-" + "-".join(f"{k}{v}" for k, v in lay.items()),
                       marks=() if lay is LAYOUTS[-1] else pytest.mark.slow) for lay in LAYOUTS]


@pytest.mark.parametrize("layout,fmt", CASES)
def test_bf16_roundtrip_bit_exact(tiny_bf16_dir, tmp_path, layout, fmt):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", ckpt_format=fmt, progress=False, **layout)
    rep = verify(m, tiny_bf16_dir, values=True)
    assert rep["ok"] and rep["values_checked"] and rep["hf_tensors_accounted"] == len(HFCheckpointReader(tiny_bf16_dir))
    h = mcore_to_hf(m, tmp_path / "h", max_shard_bytes=300 << 10, progress=False)
    _same(tiny_bf16_dir, h)
    assert verify(h)["kind"] == "hf"
    idx = json.loads((h / "model.safetensors.index.json").read_text())
    assert idx["metadata"]["total_size"] == sum(HFCheckpointReader(h).info(n).nbytes for n in idx["weight_map"])


def test_fp8_source_dequantized_exactly_and_requantized(tiny_fp8_dir, tmp_path):
    m = hf_to_mcore(tiny_fp8_dir, tmp_path / "m", pp=2, ep=2, progress=False)
    verify(m, tiny_fp8_dir, values=True)  # every megatron tensor == dequantized HF sources, bit for bit
    src = HFCheckpointReader(tiny_fp8_dir)
    bf = mcore_to_hf(m, tmp_path / "bf16", progress=False)
    rb = HFCheckpointReader(bf)
    assert not [n for n in rb.names() if n.endswith("_scale_inv")]
    for n in rb.names():
        assert torch.equal(rb.get(n), src.get_dequantized(n, rb.get(n).dtype)), n
    assert "quantization_config" not in json.loads((bf / "config.json").read_text())

    f8 = mcore_to_hf(m, tmp_path / "fp8", fp8=True, progress=False)
    rf = HFCheckpointReader(f8)
    assert rf.names() == src.names()  # same tensors, same scales, same BF16 list
    exact = 0
    for n in src.names():
        assert rf.info(n).dtype == src.info(n).dtype and rf.info(n).shape == src.info(n).shape, n
        if n.endswith("_scale_inv") or keeps_bf16(n):
            continue
        x = src.get_dequantized(n, torch.float32)
        y = rf.get_dequantized(n, torch.float32)
        s = src.get(n + "_scale_inv").repeat_interleave(128, 0)[: x.shape[0]].repeat_interleave(128, 1)[:, : x.shape[1]]
        assert ((x - y).abs() <= x.abs() / 16 + s * 2**-9 + 1e-12).all(), n
        exact += torch.equal(x, y)
    assert exact > 0  # most blocks re-quantize to the same codes
    assert json.loads((f8 / "config.json").read_text())["quantization_config"]["weight_block_size"] == [128, 128]


def test_mtp_copied_and_dropped(tiny_bf16_dir, tmp_path):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", pp=2, progress=False)
    man = json.loads((m / "adnanny_ckpt.json").read_text())
    assert man["mtp_copied"] and ["model.layers.4.embed_tokens.weight", "model.embed_tokens.weight"] in man["shared_hf_tensors"]
    from adnanny_ckpt.torch_dist import TorchDistReader

    keys = TorchDistReader(m / "release").keys()
    assert "mtp.layers.0.eh_proj.weight" in keys and "mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc1.weight" in keys
    d = hf_to_mcore(tiny_bf16_dir, tmp_path / "d", pp=2, mtp="drop", progress=False)
    man = json.loads((d / "adnanny_ckpt.json").read_text())
    assert not man["mtp_copied"] and "model.layers.4.eh_proj.weight" in man["dropped_hf_tensors"]
    assert not [k for k in TorchDistReader(d / "release").keys() if k.startswith("mtp.")]
    h = mcore_to_hf(d, tmp_path / "h", progress=False)
    assert not [n for n in HFCheckpointReader(h).names() if n.startswith("model.layers.4.")]
