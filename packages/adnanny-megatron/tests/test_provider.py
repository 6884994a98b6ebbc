"""HF config.json -> megatron config mapping (DeepSeek-V3 and Llama), and the TE name map."""

from __future__ import annotations

import pytest

from adnanny_megatron.errors import AdNannyMegatronError
from adnanny_megatron.provider import local_to_te_name, te_to_local_name, transformer_config_from_hf

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def tiny_cfg() -> dict:
    from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

    return tiny_deepseek_v3_config(fp8=False)


def test_deepseek_fields_map(tiny_cfg: dict) -> None:
    spec = transformer_config_from_hf(tiny_cfg, bf16=False, use_te=False)
    c = spec.config
    assert c.moe_layer_freq == [0, 1, 1, 1]  # first_k_dense_replace = 1
    assert c.num_moe_experts == 8 and c.moe_router_topk == 4
    assert (c.moe_router_num_groups, c.moe_router_group_topk) == (4, 2)
    assert c.moe_router_score_function == "sigmoid" and c.moe_router_enable_expert_bias
    assert c.moe_router_topk_scaling_factor == tiny_cfg["routed_scaling_factor"]
    assert c.moe_shared_expert_intermediate_size == tiny_cfg["moe_intermediate_size"]
    assert c.rope_type == "yarn" and c.mscale_all_dim == 1.0  # megatron's default would be 0
    assert c.rotary_scaling_factor == tiny_cfg["rope_scaling"]["factor"]
    assert c.kv_channels == tiny_cfg["v_head_dim"]  # required by the local MLA attention
    assert c.qk_head_dim == tiny_cfg["qk_nope_head_dim"] and c.qk_pos_emb_head_dim == tiny_cfg["qk_rope_head_dim"]
    assert c.moe_router_bias_update_rate == 0.0
    assert not c.bf16 and spec.position_embedding_type == "none"


def test_bf16_switch(tiny_cfg: dict) -> None:
    import torch

    c = transformer_config_from_hf(tiny_cfg, bf16=True, use_te=False).config
    assert c.bf16 and c.params_dtype == torch.bfloat16


def test_group_routing_trap_is_refused(tiny_cfg: dict) -> None:
    bad = dict(tiny_cfg, num_experts_per_tok=2)
    with pytest.raises(AdNannyMegatronError, match=r"`num_experts_per_tok` == 2 \* `topk_group`"):
        transformer_config_from_hf(bad, bf16=False)


def test_unknown_model_type_and_missing_key(tiny_cfg: dict) -> None:
    with pytest.raises(AdNannyMegatronError, match=r"unsupported `model_type` 'gpt2'"):
        transformer_config_from_hf({"model_type": "gpt2"}, bf16=False)
    cfg = dict(tiny_cfg)
    del cfg["kv_lora_rank"]
    with pytest.raises(AdNannyMegatronError, match=r"lacks required key `kv_lora_rank`"):
        transformer_config_from_hf(cfg, bf16=False)


def test_ep_must_divide_experts(tiny_cfg: dict) -> None:
    with pytest.raises(AdNannyMegatronError, match=r"`ep`=3 must divide `n_routed_experts`=8"):
        transformer_config_from_hf(tiny_cfg, bf16=False, ep=3)


def test_llama_rope_parameters_are_read() -> None:
    cfg = {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True}
    spec = transformer_config_from_hf(cfg, bf16=False)
    assert spec.rotary_base == 100000.0 and spec.tie_embeddings
    assert spec.config.num_query_groups == 2 and spec.config.kv_channels == 8


def test_te_name_map_round_trip() -> None:
    cases = [
        ("decoder.layers.0.self_attention.q_layernorm.weight", True, False,
         "decoder.layers.0.self_attention.linear_q_up_proj.layer_norm_weight"),
        ("decoder.layers.1.self_attention.kv_layernorm.weight", True, True,
         "decoder.layers.1.self_attention.linear_kv_up_proj.layer_norm_weight"),
        ("decoder.layers.0.pre_mlp_layernorm.weight", True, False, "decoder.layers.0.mlp.linear_fc1.layer_norm_weight"),
        ("decoder.layers.1.pre_mlp_layernorm.weight", True, True, "decoder.layers.1.pre_mlp_layernorm.weight"),
        ("decoder.layers.0.input_layernorm.weight", False, False,
         "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"),
        ("decoder.layers.0.input_layernorm.weight", True, False, "decoder.layers.0.input_layernorm.weight"),
    ]
    for local, mla, moe, te in cases:
        assert local_to_te_name(local, mla=mla, moe_layer=moe) == te
        assert te_to_local_name(te, mla=mla, moe_layer=moe) == local


@pytest.mark.parametrize("family", ["deepseek_v3", "llama"])
def test_te_name_map_agrees_with_adnanny_ckpt(family: str, tiny_cfg: dict) -> None:
    """Our TE<->local map must name every non-expert parameter exactly as adnanny-ckpt's converter does."""
    from adnanny_ckpt.names import mcore_params, model_spec_from_hf_config, te_name

    cfg = tiny_cfg if family == "deepseek_v3" else {
        "model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    spec = model_spec_from_hf_config(cfg)
    checked = 0
    for p in mcore_params(spec):
        if p.expert is not None or p.layer is None:
            continue
        moe = spec.is_moe_layer(p.layer)
        assert local_to_te_name(p.name, mla=spec.mla, moe_layer=moe) == te_name(spec, p), p.name
        checked += 1
    assert checked >= (20 if family == "deepseek_v3" else 10)
