"""`verify(forward=True)`: an independent check that catches mapping bugs the converter cannot see in itself.

Each mutation below is applied to the converter's own name map / fuse functions, so both directions and the
bit-for-bit `values=True` check agree with it (the round trip stays exact) — only the forward check, which
reads each side by its own format's semantics, notices.
"""

import dataclasses
import json

import pytest
import torch

import adnanny_ckpt.hf2mcore as h2m
import adnanny_ckpt.layout as lay_mod
import adnanny_ckpt.mcore2hf as m2h
import adnanny_ckpt.names as names
import adnanny_ckpt.shards as shards
from adnanny_ckpt import VerifyError, hf_to_mcore, mcore_to_hf, verify
from adnanny_ckpt.safetensors_io import HFCheckpointReader


def _swap_sources(monkeypatch, a_suffix: str, b_suffix: str, layer_prefix: str) -> None:
    """Patch the name map so that the megatron params ending in a_suffix / b_suffix (under layer_prefix) take
    each other's HF source — in every module that uses the map."""
    real = names.mcore_params

    def mutated(*args, **kwargs):
        ps = real(*args, **kwargs)
        ia = next(i for i, p in enumerate(ps) if p.name == layer_prefix + a_suffix)
        ib = next(i for i, p in enumerate(ps) if p.name == layer_prefix + b_suffix)
        pa, pb = ps[ia], ps[ib]
        ps[ia], ps[ib] = dataclasses.replace(pa, hf=pb.hf), dataclasses.replace(pb, hf=pa.hf)
        return ps

    for mod in (names, h2m, m2h, lay_mod):
        monkeypatch.setattr(mod, "mcore_params", mutated)


def _self_consistent(src, tmp_path, **layout):
    """Convert both ways under the mutation: values check and round trip both pass."""
    m = hf_to_mcore(src, tmp_path / "m", progress=False, **layout)
    assert verify(m, src, values=True)["values_checked"]
    h = mcore_to_hf(m, tmp_path / "h", progress=False)
    a, b = HFCheckpointReader(src), HFCheckpointReader(h)
    assert a.names() == b.names() and all(torch.equal(a.get(n), b.get(n)) for n in a.names())
    return m, h


def test_forward_check_passes_a_correct_conversion_in_both_directions(tiny_bf16_dir, tmp_path):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", pp=2, ep=2, tp=2, progress=False)
    rep = verify(m, forward=True)  # reference: the HF source recorded in the descriptor
    assert rep["forward_units"] == 1 + 4 + 1 + 1 and rep["forward_max_rel_diff"] < 1e-5  # emb, 4 layers, MTP, head
    h = mcore_to_hf(m, tmp_path / "h", progress=False)
    assert verify(h, forward=True)["forward_reference"] == str(m.resolve())  # HF output vs the megatron checkpoint
    assert verify(h, tiny_bf16_dir, forward=True)["forward_max_rel_diff"] < 1e-5


def test_forward_check_on_fp8_source_and_requantized_output(tiny_fp8_dir, tmp_path):
    m = hf_to_mcore(tiny_fp8_dir, tmp_path / "m", ep=2, progress=False)
    assert verify(m, forward=True)["forward_max_rel_diff"] < 1e-5  # dequantized exactly
    h = mcore_to_hf(m, tmp_path / "h", progress=False)  # FP8 again (re-quantized)
    assert HFCheckpointReader(h).is_fp8("model.layers.1.mlp.experts.0.up_proj.weight")
    assert verify(h, tiny_fp8_dir, forward=True)["ok"]  # both sides dequantized by the check's own dequantizer


def test_swapped_layernorm_sources_are_caught(tiny_bf16_dir, tmp_path, monkeypatch):
    _swap_sources(monkeypatch, "input_layernorm.weight", "pre_mlp_layernorm.weight", "decoder.layers.2.")
    m, h = _self_consistent(tiny_bf16_dir, tmp_path, pp=2, ep=2)
    with pytest.raises(VerifyError, match=r"layer 2: forward differs") as exc:
        verify(m, forward=True)
    assert "layer 1:" not in str(exc.value) and "layer 3:" not in str(exc.value)  # names the layer, only it
    with pytest.raises(VerifyError, match=r"layer 2: forward differs"):
        verify(h, forward=True)  # the HF output against the megatron checkpoint it came from


def test_swapped_mtp_norms_are_caught(tiny_bf16_dir, tmp_path, monkeypatch):
    _swap_sources(monkeypatch, "enorm.weight", "hnorm.weight", "mtp.layers.0.")
    m, _ = _self_consistent(tiny_bf16_dir, tmp_path, pp=2)
    with pytest.raises(VerifyError, match=r"mtp 0: forward differs"):
        verify(m, forward=True)


def test_swapped_eh_proj_concatenation_is_caught(tiny_fp8_dir, tmp_path, monkeypatch):
    """A converter that stores eh_proj's columns as [hidden | embedding] instead of megatron's
    [embedding | hidden] (and undoes it on the way back) is exact both ways; only the forward check fails."""
    real_fuse, real_unfuse = shards.fuse, shards.unfuse

    def swap(t):
        h = t.shape[1] // 2
        return torch.cat([t[:, h:], t[:, :h]], dim=1)

    def fuse(spec, p, tensors, padded_vocab=None):
        t = real_fuse(spec, p, tensors, padded_vocab)
        return swap(t) if p.name.endswith("eh_proj.weight") else t

    def unfuse(spec, p, t):
        return real_unfuse(spec, swap(t) if p.name.endswith("eh_proj.weight") else t)

    for mod in (shards, h2m):
        monkeypatch.setattr(mod, "fuse", fuse)
    for mod in (shards, m2h):
        monkeypatch.setattr(mod, "unfuse", unfuse)
    m = hf_to_mcore(tiny_fp8_dir, tmp_path / "m", pp=2, progress=False)
    assert verify(m, tiny_fp8_dir, values=True)["values_checked"]  # the converter agrees with itself
    with pytest.raises(VerifyError, match=r"mtp 0: forward differs") as exc:
        verify(m, forward=True)
    assert "layer " not in str(exc.value)


def test_forward_check_cli(tiny_bf16_dir, tmp_path, capsys):
    from adnanny_ckpt.cli import main

    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", ep=2, progress=False)
    assert main(["verify", str(m), "--forward", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["forward_units"] == 7
