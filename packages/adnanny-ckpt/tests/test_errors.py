import json
import shutil

import pytest
import torch

from adnanny_ckpt import (
    AdNannyCkptError,
    CheckpointFormatError,
    ConfigMismatchError,
    LayoutError,
    UnsafeInputError,
    VerifyError,
    hf_to_mcore,
    mcore_to_hf,
    verify,
)
from adnanny_ckpt.safetensors_io import INDEX_NAME


@pytest.fixture()
def ck(tmp_path, tiny_fp8_dir):
    d = tmp_path / "hf"
    shutil.copytree(tiny_fp8_dir, d)
    return d


def _edit_config(d, **kv):
    c = json.loads((d / "config.json").read_text())
    c.update(kv)
    (d / "config.json").write_text(json.dumps(c))


def test_config_with_more_experts_than_tensors(ck, tmp_path):
    _edit_config(ck, n_routed_experts=16)
    with pytest.raises(ConfigMismatchError, match=r"`model\.layers\.1\.mlp\.gate\.weight` has shape \[8, 128\].*implies \[16, 128\]"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_config_describing_a_missing_tensor(ck, tmp_path):
    _edit_config(ck, num_nextn_predict_layers=2)  # a second MTP layer that the files do not have
    with pytest.raises(ConfigMismatchError, match=r"describes tensor `model\.layers\.5\..*` .*does not have it"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_config_with_wrong_hidden_size(ck, tmp_path):
    _edit_config(ck, intermediate_size=352)
    with pytest.raises(ConfigMismatchError, match=r"`model\.layers\.0\.mlp\.gate_proj\.weight` has shape \[320, 128\].*implies \[352, 128\]"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_config_with_fewer_layers(ck, tmp_path):
    _edit_config(ck, num_hidden_layers=3, num_nextn_predict_layers=0)
    with pytest.raises(ConfigMismatchError, match="not described by its config.json"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_unsupported_model_type(ck, tmp_path):
    _edit_config(ck, model_type="gpt2")
    with pytest.raises(ConfigMismatchError, match=r"`model_type` = 'gpt2' is not supported"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_missing_shard(ck, tmp_path):
    shard = sorted(ck.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointFormatError, match=f"shard `.*{shard.name}` is listed in the index but does not exist"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_missing_scale_inv(ck, tmp_path):
    from safetensors.torch import load_file, save_file

    idx = json.loads((ck / INDEX_NAME).read_text())
    name = "model.layers.1.self_attn.kv_b_proj.weight_scale_inv"
    f = idx["weight_map"].pop(name)
    sd = load_file(ck / f)
    sd.pop(name)
    save_file(sd, ck / f)
    (ck / INDEX_NAME).write_text(json.dumps(idx))
    with pytest.raises(CheckpointFormatError, match=r"FP8 tensor `model\.layers\.1\.self_attn\.kv_b_proj\.weight` has no `.*_scale_inv`"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_truncated_shard(ck, tmp_path):
    shard = sorted(ck.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointFormatError, match=f"{shard.name}` is truncated"):
        hf_to_mcore(ck, tmp_path / "o", progress=False)


def test_layouts_that_do_not_divide(ck, tmp_path):
    with pytest.raises(LayoutError, match=r"`ep` = 3 does not divide the model's 8 routed experts"):
        hf_to_mcore(ck, tmp_path / "o", ep=3, progress=False)
    with pytest.raises(LayoutError, match=r"`tp` = 3 does not divide `num_attention_heads` = 4"):
        hf_to_mcore(ck, tmp_path / "o", tp=3, progress=False)
    with pytest.raises(LayoutError, match="`ckpt_format` must be 'torch_dist' or 'legacy'"):
        hf_to_mcore(ck, tmp_path / "o", ckpt_format="zarr", progress=False)


def test_pickle_inputs_refused_unless_opted_in(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2)}, d / "pytorch_model.bin")
    with pytest.raises(UnsafeInputError, match="pickle-based weights .*pytorch_model.bin.*allow_pickle=True"):
        hf_to_mcore(d, tmp_path / "o", progress=False)


def test_existing_output_not_overwritten(tiny_bf16_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(AdNannyCkptError, match="already exists; pass `overwrite=True`"):
        hf_to_mcore(tiny_bf16_dir, out, progress=False)
    assert (out / "keep.txt").read_text() == "x"


def test_corrupted_output_detected(tiny_bf16_dir, tmp_path):
    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "m", pp=2, progress=False)
    f = sorted((m / "release").glob("*.distcp"))[-1]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(VerifyError, match=f"{f.name}` has {len(data) // 2} bytes, manifest {len(data)}"):
        verify(m)
    with pytest.raises(CheckpointFormatError, match="truncated"):
        mcore_to_hf(m, tmp_path / "h", progress=False)
    assert not (tmp_path / "h").exists()
    f.write_bytes(data[:-8] + bytes(8))
    with pytest.raises(VerifyError, match="SHA-256 differs"):
        verify(m)


def test_not_a_converted_checkpoint(tmp_path):
    with pytest.raises(CheckpointFormatError, match="is not an adnanny-ckpt megatron checkpoint"):
        mcore_to_hf(tmp_path, tmp_path / "h", progress=False)
    with pytest.raises(VerifyError, match="adnanny_ckpt.json` is missing"):
        verify(tmp_path)
