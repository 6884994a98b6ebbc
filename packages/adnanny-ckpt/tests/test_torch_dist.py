"""The torch_dist output, read back with torch.distributed.checkpoint's own reader."""

import json

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint import load as dcp_load

from adnanny_ckpt import hf_to_mcore
from adnanny_ckpt.safetensors_io import HFCheckpointReader


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_bf16_dir):
    return hf_to_mcore(tiny_bf16_dir, tmp_path_factory.mktemp("td") / "m", pp=2, ep=2, tp=2, progress=False)


def test_files_and_metadata(converted):
    d = converted / "release"
    names = sorted(p.name for p in d.iterdir())
    assert {".metadata", "common.pt", "metadata.json"} <= set(names)
    assert json.loads((d / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert (converted / "latest_checkpointed_iteration.txt").read_text() == "release"
    common = torch.load(d / "common.pt", weights_only=True)
    assert common["checkpoint_version"] == 3.0
    # PP2 x EP2 x TP2 -> one file per rank that owns something: stage 0 (dense layer 0) has no experts -> only
    # EP rank 0 writes there (2 TP ranks); stage 1 has experts on both EP ranks (4 ranks)
    assert sum(n.endswith(".distcp") for n in names) == 6


def test_keys_shapes_and_chunk_offsets(converted, tiny_cfg):
    md = FileSystemReader(str(converted / "release")).read_metadata()
    sdm = md.state_dict_metadata
    h, f, e = tiny_cfg["hidden_size"], tiny_cfg["moe_intermediate_size"], tiny_cfg["n_routed_experts"]
    fd = tiny_cfg["intermediate_size"]
    key = "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"
    assert tuple(sdm[key].size) == (e, 2 * f, h)
    offs = sorted(tuple(c.offsets) for c in sdm[key].chunks)
    # per expert j: gate halves at rows 0 and f/2, up halves at f and 3f/2 (TP2 cuts gate and up separately)
    assert offs == sorted((j, r, 0) for j in range(e) for r in (0, f // 2, f, f + f // 2))
    assert all(tuple(c.sizes) == (1, f // 2, h) for c in sdm[key].chunks)
    assert tuple(sdm["decoder.layers.0.mlp.linear_fc1.weight"].size) == (2 * fd, h)
    assert tuple(sdm["decoder.layers.1.self_attention.linear_proj.weight"].size) == (h, 4 * 32)
    assert sorted(tuple(c.offsets) for c in sdm["decoder.layers.1.self_attention.linear_proj.weight"].chunks) == [
        (0, 0), (0, 64)]
    assert tuple(sdm["embedding.word_embeddings.weight"].size) == (512, h)  # 512 is already a multiple of 128*2
    assert {"decoder.final_layernorm.weight", "output_layer.weight", "decoder.layers.3.mlp.router.expert_bias",
            "decoder.layers.2.self_attention.q_layernorm.weight", "decoder.layers.2.self_attention.kv_layernorm.weight",
            "decoder.layers.2.pre_mlp_layernorm.weight", "mtp.layers.0.enorm.weight"} <= set(sdm)
    assert sdm["decoder.layers.3.mlp.router.expert_bias"].properties.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_reader_returns_the_hf_values(converted, tiny_bf16_dir):
    r = HFCheckpointReader(tiny_bf16_dir)
    md = FileSystemReader(str(converted / "release")).read_metadata().state_dict_metadata
    keys = ["decoder.layers.3.mlp.experts.experts.linear_fc1.weight", "decoder.layers.1.self_attention.linear_proj.weight",
            "decoder.layers.0.mlp.linear_fc1.weight", "embedding.word_embeddings.weight",
            "mtp.layers.0.transformer_layer.mlp.shared_experts.linear_fc2.weight"]
    sd = {k: torch.empty(tuple(md[k].size), dtype=md[k].properties.dtype) for k in keys}
    dcp_load(sd, storage_reader=FileSystemReader(str(converted / "release")), no_dist=True)
    g = lambda n: r.get(n)  # noqa: E731
    want_experts = torch.stack([torch.cat([g(f"model.layers.3.mlp.experts.{j}.gate_proj.weight"),
                                           g(f"model.layers.3.mlp.experts.{j}.up_proj.weight")]) for j in range(8)])
    assert torch.equal(sd[keys[0]], want_experts)
    assert torch.equal(sd[keys[1]], g("model.layers.1.self_attn.o_proj.weight"))
    assert torch.equal(sd[keys[2]], torch.cat([g("model.layers.0.mlp.gate_proj.weight"), g("model.layers.0.mlp.up_proj.weight")]))
    assert torch.equal(sd[keys[3]], g("model.embed_tokens.weight"))
    assert torch.equal(sd[keys[4]], g("model.layers.4.mlp.shared_experts.down_proj.weight"))


def test_te_names_and_homogeneous_llama_keys(tmp_path, tiny_bf16_dir):
    from adnanny_ckpt.names import mcore_params, model_spec_from_hf_config, sharded_key, te_name
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    m = hf_to_mcore(tiny_bf16_dir, tmp_path / "te", te_names=True, progress=False)
    keys = set(FileSystemReader(str(m / "release")).read_metadata().state_dict_metadata)
    assert "decoder.layers.1.self_attention.linear_q_up_proj.layer_norm_weight" in keys
    assert "decoder.layers.1.self_attention.linear_kv_up_proj.layer_norm_weight" in keys
    assert "decoder.layers.0.mlp.linear_fc1.layer_norm_weight" in keys  # dense layer: norm fused
    assert "decoder.layers.1.pre_mlp_layernorm.weight" in keys  # MoE layer: separate norm
    spec = model_spec_from_hf_config(tiny_deepseek_v3_config())
    p = [q for q in mcore_params(spec, te_names=True) if q.expert == 3 and q.layer == 2][0]
    assert te_name(spec, p) == "decoder.layers.2.mlp.experts.linear_fc1.weight3"
    llama = model_spec_from_hf_config({"model_type": "llama", "hidden_size": 64, "vocab_size": 100, "num_hidden_layers": 2,
                                       "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96})
    ps = {q.name: q for q in mcore_params(llama)}
    assert sharded_key(llama, ps["decoder.layers.1.input_layernorm.weight"], te_names=False) == (
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight", 1)
