"""The HF tensor inventory of a DeepSeek-V3-style checkpoint: every tensor name and its shape, in file order.

Production code (``mcore_to_hf`` orders its output by it) and the synthetic test-data writer both need it; it
lives here so that converting a checkpoint never imports the test-data module :mod:`adnanny_ckpt.synthetic`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["hf_tensor_shapes"]


def _attn_shapes(c: dict[str, Any], p: str) -> Iterator[tuple[str, tuple[int, ...]]]:
    h, nh = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    yield f"{p}input_layernorm.weight", (h,)
    if c.get("q_lora_rank"):
        yield f"{p}self_attn.q_a_proj.weight", (c["q_lora_rank"], h)
        yield f"{p}self_attn.q_a_layernorm.weight", (c["q_lora_rank"],)
        yield f"{p}self_attn.q_b_proj.weight", (nh * qk, c["q_lora_rank"])
    else:
        yield f"{p}self_attn.q_proj.weight", (nh * qk, h)
    yield f"{p}self_attn.kv_a_proj_with_mqa.weight", (c["kv_lora_rank"] + c["qk_rope_head_dim"], h)
    yield f"{p}self_attn.kv_a_layernorm.weight", (c["kv_lora_rank"],)
    yield f"{p}self_attn.kv_b_proj.weight", (nh * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])
    yield f"{p}self_attn.o_proj.weight", (h, nh * c["v_head_dim"])
    yield f"{p}post_attention_layernorm.weight", (h,)


def _mlp_shapes(c: dict[str, Any], p: str, layer: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    h = c["hidden_size"]
    if layer < c.get("first_k_dense_replace", 0):
        f = c["intermediate_size"]
        yield f"{p}mlp.gate_proj.weight", (f, h)
        yield f"{p}mlp.up_proj.weight", (f, h)
        yield f"{p}mlp.down_proj.weight", (h, f)
        return
    f, e = c["moe_intermediate_size"], c["n_routed_experts"]
    yield f"{p}mlp.gate.weight", (e, h)
    yield f"{p}mlp.gate.e_score_correction_bias", (e,)
    for j in range(e):
        yield f"{p}mlp.experts.{j}.gate_proj.weight", (f, h)
        yield f"{p}mlp.experts.{j}.up_proj.weight", (f, h)
        yield f"{p}mlp.experts.{j}.down_proj.weight", (h, f)
    if c.get("n_shared_experts"):
        fs = f * c["n_shared_experts"]
        yield f"{p}mlp.shared_experts.gate_proj.weight", (fs, h)
        yield f"{p}mlp.shared_experts.up_proj.weight", (fs, h)
        yield f"{p}mlp.shared_experts.down_proj.weight", (h, fs)


def hf_tensor_shapes(config: dict[str, Any], *, include_mtp: bool = True) -> dict[str, tuple[int, ...]]:
    """Every (unquantized) tensor name of a DeepSeek-V3-style HF checkpoint and its shape, in file order."""
    c = config
    h, v = c["hidden_size"], c["vocab_size"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    n = c["num_hidden_layers"]
    for i in range(n):
        p = f"model.layers.{i}."
        out.update(_attn_shapes(c, p))
        out.update(_mlp_shapes(c, p, i))
    if include_mtp:
        for k in range(c.get("num_nextn_predict_layers", 0) or 0):
            p = f"model.layers.{n + k}."
            out[f"{p}embed_tokens.weight"] = (v, h)
            out[f"{p}enorm.weight"] = (h,)
            out[f"{p}hnorm.weight"] = (h,)
            out[f"{p}eh_proj.weight"] = (h, 2 * h)
            out.update(_attn_shapes(c, p))
            out.update(_mlp_shapes(c, p, n + k))
            out[f"{p}shared_head.norm.weight"] = (h,)
            out[f"{p}shared_head.head.weight"] = (v, h)
    out["model.norm.weight"] = (h,)
    if not c.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (v, h)
    return out


