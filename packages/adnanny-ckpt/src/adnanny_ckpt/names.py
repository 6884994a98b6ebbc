"""The HF ⇄ megatron-core name map, defined once (adnanny-megatron imports it).

A :class:`ModelSpec` is read from an HF ``config.json`` (DeepSeek-V3/R1 or a Llama-family dense model).
:func:`mcore_params` lists every megatron-core parameter of the *unsharded* model with

* ``name``: the module path in megatron-core's **local** spec with global layer and expert indices
  (``decoder.layers.3.mlp.experts.local_experts.17.linear_fc1.weight``);
* ``hf``: the HF tensors it is made of — two names mean ``cat([gate, up], 0)`` (``linear_fc1``), three mean
  Llama's ``q, k, v`` interleaved per query group as megatron's ``linear_qkv`` expects;
* ``split``: how tensor parallelism cuts it — ``col`` (dim 0), ``row`` (dim 1), ``glu`` (gate and up each cut
  along dim 0, then concatenated per rank), ``none`` (replicated).

Names in megatron-core 0.16 (local spec): MLA ``self_attention.linear_q_down_proj``, ``q_layernorm``,
``linear_q_up_proj``, ``linear_kv_down_proj``, ``kv_layernorm``, ``linear_kv_up_proj``, ``linear_proj``; dense MLP
``mlp.linear_fc1`` (= [gate; up]) / ``mlp.linear_fc2``; MoE ``mlp.router.weight``, ``mlp.router.expert_bias``,
``mlp.experts.local_experts.j.linear_fc{1,2}``, ``mlp.shared_experts.linear_fc{1,2}``; ``input_layernorm``,
``pre_mlp_layernorm``, ``decoder.final_layernorm``, ``embedding.word_embeddings``, ``output_layer``; MTP
``mtp.layers.k.{enorm,hnorm,eh_proj,final_layernorm}`` + ``mtp.layers.k.transformer_layer.*``.

TransformerEngine naming (``te_names=True``) fuses norms into the following linear (``layer_norm_weight``):
MLA ``q_layernorm`` → ``linear_q_up_proj.layer_norm_weight``, ``kv_layernorm`` →
``linear_kv_up_proj.layer_norm_weight``; a dense layer's ``pre_mlp_layernorm`` → ``mlp.linear_fc1.layer_norm_weight``
(MoE layers keep a separate ``pre_mlp_layernorm``); Llama's ``input_layernorm`` →
``self_attention.linear_qkv.layer_norm_weight``; grouped experts become ``mlp.experts.linear_fc1.weight{j}``.
Under TE the MLA down projections are replicated (``parallel_mode="duplicated"``); under the local spec they are
column-parallel — the split differs, the bytes do not.

The **sharded keys** megatron's ``dist_checkpointing`` stores (:func:`sharded_key`) differ from module paths:
experts of a layer share one key ``...mlp.experts.experts.linear_fc1.weight`` with a leading expert axis; when all
decoder layers have the same structure (a dense Llama) they share one key per parameter with a leading layer axis
(``decoder.layers.self_attention.linear_qkv.weight`` [L, ...]); the local spec of a standard-attention layer maps
its norms to the TE names (its ``sharded_state_dict_keys_map``), so Llama keys are TE-style in both schemes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adnanny_ckpt.errors import ConfigMismatchError

__all__ = ["ModelSpec", "ParamSpec", "SUPPORTED_MODEL_TYPES", "TE_FUSED_NORMS", "VOCAB_DIVISIBLE_BY",
           "local_module_name", "local_to_te_name", "mcore_params", "model_spec_from_hf_config",
           "padded_vocab_size", "sharded_key", "te_name", "te_to_local_name"]

#: ``model_type`` values of config.json this project converts and trains (adnanny-megatron uses the same set).
DEEPSEEK_MODEL_TYPES = ("deepseek_v3", "deepseek_v32", "kimi_k2")
LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_MODEL_TYPES = DEEPSEEK_MODEL_TYPES + LLAMA_MODEL_TYPES

#: THE vocabulary-padding rule (megatron's ``make_vocab_size_divisible_by``): embedding and head rows are padded
#: to a multiple of ``VOCAB_DIVISIBLE_BY * tp`` (zeros on conversion; adnanny-megatron masks those logits).
VOCAB_DIVISIBLE_BY = 128


def padded_vocab_size(vocab: int, divisible_by: int = VOCAB_DIVISIBLE_BY, tp: int = 1) -> int:
    """Megatron's vocab padding: round ``vocab`` up to a multiple of ``divisible_by * tp``.

    One rule for conversion (adnanny-ckpt) and the model provider (adnanny-megatron), so a checkpoint converted
    for TP=4 loads into a model built for TP=4 (DeepSeek-V3's 129280 rows become 129536 at TP 4).
    """
    if vocab < 1 or divisible_by < 1 or tp < 1:
        raise ConfigMismatchError(
            f"vocab padding needs positive sizes; got vocab={vocab}, divisible_by={divisible_by}, tp={tp}.")
    m = divisible_by * tp
    return -(-vocab // m) * m


@dataclass(frozen=True)
class ModelSpec:
    """The architecture facts conversion needs, from an HF config.json."""

    family: str  # "deepseek_v3" | "llama"
    hidden_size: int
    vocab_size: int
    num_layers: int
    num_heads: int
    tie_word_embeddings: bool = False
    # dense MLP
    intermediate_size: int = 0
    # llama attention
    num_query_groups: int = 0
    head_dim: int = 0
    # MLA
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # MoE
    first_k_dense: int = 0
    num_experts: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    num_mtp_layers: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def mla(self) -> bool:
        return self.family == "deepseek_v3"

    def is_moe_layer(self, layer: int) -> bool:
        """Layer ``layer`` (0-based; MTP layers count from ``num_layers``) has routed experts."""
        return self.is_moe and layer >= self.first_k_dense

    @property
    def homogeneous(self) -> bool:
        """All decoder layers share one structure -> megatron stacks them under one sharded key."""
        return not self.is_moe or self.first_k_dense == 0


def _req(cfg: dict[str, Any], key: str, path: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigMismatchError(f"`{path}` has no `{key}`; it is required to map the checkpoint's tensors.")
    return cfg[key]


def model_spec_from_hf_config(cfg: dict[str, Any], path: str = "config.json") -> ModelSpec:
    """Validate an HF config dict and turn it into a :class:`ModelSpec` (errors name the key)."""
    mt = cfg.get("model_type")
    h, v, n = _req(cfg, "hidden_size", path), _req(cfg, "vocab_size", path), _req(cfg, "num_hidden_layers", path)
    nh = _req(cfg, "num_attention_heads", path)
    if mt in DEEPSEEK_MODEL_TYPES:
        e = int(cfg.get("n_routed_experts") or 0)
        k = int(cfg.get("first_k_dense_replace") or 0)
        if e and int(cfg.get("moe_layer_freq", 1)) != 1:
            raise ConfigMismatchError(f"`{path}`: `moe_layer_freq` = {cfg['moe_layer_freq']} is not supported (only 1).")
        return ModelSpec(
            family="deepseek_v3", hidden_size=h, vocab_size=v, num_layers=n, num_heads=nh,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            intermediate_size=_req(cfg, "intermediate_size", path),
            q_lora_rank=cfg.get("q_lora_rank"), kv_lora_rank=_req(cfg, "kv_lora_rank", path),
            qk_nope_head_dim=_req(cfg, "qk_nope_head_dim", path), qk_rope_head_dim=_req(cfg, "qk_rope_head_dim", path),
            v_head_dim=_req(cfg, "v_head_dim", path), first_k_dense=k, num_experts=e,
            moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0),
            num_shared_experts=int(cfg.get("n_shared_experts") or 0),
            num_mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0), raw=cfg,
        )
    if mt in LLAMA_MODEL_TYPES:
        if cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise ConfigMismatchError(f"`{path}`: biases (`attention_bias`/`mlp_bias`) are not supported yet.")
        ng = int(cfg.get("num_key_value_heads") or nh)
        if nh % ng:
            raise ConfigMismatchError(f"`{path}`: `num_attention_heads` {nh} is not a multiple of `num_key_value_heads` {ng}.")
        return ModelSpec(
            family="llama", hidden_size=h, vocab_size=v, num_layers=n, num_heads=nh,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            intermediate_size=_req(cfg, "intermediate_size", path), num_query_groups=ng,
            head_dim=int(cfg.get("head_dim") or h // nh), raw=cfg,
        )
    raise ConfigMismatchError(
        f"`{path}`: `model_type` = {mt!r} is not supported; expected a DeepSeek-V3/R1 (`deepseek_v3`) or a "
        "Llama-family dense model (`llama`, `mistral`, `qwen2`)."
    )


@dataclass(frozen=True)
class ParamSpec:
    """One megatron-core parameter of the unsharded model and where its bytes come from in HF."""

    name: str  # local-spec module path, global layer/expert indices
    hf: tuple[str, ...]  # HF sources (see module docstring)
    shape: tuple[int, ...]  # full megatron shape (before TP; vocab unpadded)
    split: str  # "none" | "col" | "row" | "glu"
    group: str  # "embedding" | "layer" | "final" | "head" | "mtp"
    layer: int | None = None  # global decoder layer (MTP: num_layers + k)
    expert: int | None = None  # global routed-expert index
    vocab: bool = False  # rows are the (paddable) vocabulary


def _attn(s: ModelSpec, p: str, hp: str, layer: int, group: str, te: bool) -> list[ParamSpec]:
    h = s.hidden_size
    out = [ParamSpec(f"{p}input_layernorm.weight", (f"{hp}input_layernorm.weight",), (h,), "none", group, layer)]
    a = f"{p}self_attention."
    ha = f"{hp}self_attn."
    if s.mla:
        nh, qk = s.num_heads, s.qk_nope_head_dim + s.qk_rope_head_dim
        down = "none" if te else "col"
        if s.q_lora_rank:
            out += [
                ParamSpec(f"{a}linear_q_down_proj.weight", (f"{ha}q_a_proj.weight",), (s.q_lora_rank, h), down, group, layer),
                ParamSpec(f"{a}q_layernorm.weight", (f"{ha}q_a_layernorm.weight",), (s.q_lora_rank,), "none", group, layer),
                ParamSpec(f"{a}linear_q_up_proj.weight", (f"{ha}q_b_proj.weight",), (nh * qk, s.q_lora_rank), "col", group, layer),
            ]
        else:
            out.append(ParamSpec(f"{a}linear_q_proj.weight", (f"{ha}q_proj.weight",), (nh * qk, h), "col", group, layer))
        out += [
            ParamSpec(f"{a}linear_kv_down_proj.weight", (f"{ha}kv_a_proj_with_mqa.weight",),
                      (s.kv_lora_rank + s.qk_rope_head_dim, h), down, group, layer),
            ParamSpec(f"{a}kv_layernorm.weight", (f"{ha}kv_a_layernorm.weight",), (s.kv_lora_rank,), "none", group, layer),
            ParamSpec(f"{a}linear_kv_up_proj.weight", (f"{ha}kv_b_proj.weight",),
                      (nh * (s.qk_nope_head_dim + s.v_head_dim), s.kv_lora_rank), "col", group, layer),
            ParamSpec(f"{a}linear_proj.weight", (f"{ha}o_proj.weight",), (h, nh * s.v_head_dim), "row", group, layer),
        ]
    else:
        ng, hd, nh = s.num_query_groups, s.head_dim, s.num_heads
        out += [
            ParamSpec(f"{a}linear_qkv.weight", (f"{ha}q_proj.weight", f"{ha}k_proj.weight", f"{ha}v_proj.weight"),
                      ((nh + 2 * ng) * hd, h), "col", group, layer),
            ParamSpec(f"{a}linear_proj.weight", (f"{ha}o_proj.weight",), (h, nh * hd), "row", group, layer),
        ]
    out.append(ParamSpec(f"{p}pre_mlp_layernorm.weight", (f"{hp}post_attention_layernorm.weight",), (h,), "none",
                         group, layer))
    return out


def _mlp(s: ModelSpec, p: str, hp: str, layer: int, group: str) -> list[ParamSpec]:
    h = s.hidden_size
    if not s.is_moe_layer(layer):
        f = s.intermediate_size
        return [
            ParamSpec(f"{p}mlp.linear_fc1.weight", (f"{hp}mlp.gate_proj.weight", f"{hp}mlp.up_proj.weight"), (2 * f, h),
                      "glu", group, layer),
            ParamSpec(f"{p}mlp.linear_fc2.weight", (f"{hp}mlp.down_proj.weight",), (h, f), "row", group, layer),
        ]
    f, e = s.moe_intermediate_size, s.num_experts
    out = [
        ParamSpec(f"{p}mlp.router.weight", (f"{hp}mlp.gate.weight",), (e, h), "none", group, layer),
        ParamSpec(f"{p}mlp.router.expert_bias", (f"{hp}mlp.gate.e_score_correction_bias",), (e,), "none", group, layer),
    ]
    for j in range(e):
        ep, hep = f"{p}mlp.experts.local_experts.{j}.", f"{hp}mlp.experts.{j}."
        out += [
            ParamSpec(f"{ep}linear_fc1.weight", (f"{hep}gate_proj.weight", f"{hep}up_proj.weight"), (2 * f, h), "glu",
                      group, layer, j),
            ParamSpec(f"{ep}linear_fc2.weight", (f"{hep}down_proj.weight",), (h, f), "row", group, layer, j),
        ]
    if s.num_shared_experts:
        fs = f * s.num_shared_experts
        sp, hsp = f"{p}mlp.shared_experts.", f"{hp}mlp.shared_experts."
        out += [
            ParamSpec(f"{sp}linear_fc1.weight", (f"{hsp}gate_proj.weight", f"{hsp}up_proj.weight"), (2 * fs, h), "glu",
                      group, layer),
            ParamSpec(f"{sp}linear_fc2.weight", (f"{hsp}down_proj.weight",), (h, fs), "row", group, layer),
        ]
    return out


def mcore_params(s: ModelSpec, *, te_names: bool = False, mtp: bool = True) -> list[ParamSpec]:
    """Every megatron-core parameter of the model, in model order (see module docstring)."""
    h, v = s.hidden_size, s.vocab_size
    out = [ParamSpec("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), (v, h), "col", "embedding",
                     vocab=True)]
    for i in range(s.num_layers):
        p, hp = f"decoder.layers.{i}.", f"model.layers.{i}."
        out += _attn(s, p, hp, i, "layer", te_names) + _mlp(s, p, hp, i, "layer")
    out.append(ParamSpec("decoder.final_layernorm.weight", ("model.norm.weight",), (h,), "none", "final"))
    if not s.tie_word_embeddings:
        out.append(ParamSpec("output_layer.weight", ("lm_head.weight",), (v, h), "col", "head", vocab=True))
    if mtp:
        for k in range(s.num_mtp_layers):
            li = s.num_layers + k
            p, hp = f"mtp.layers.{k}.", f"model.layers.{li}."
            out += [
                ParamSpec(f"{p}enorm.weight", (f"{hp}enorm.weight",), (h,), "none", "mtp", li),
                ParamSpec(f"{p}hnorm.weight", (f"{hp}hnorm.weight",), (h,), "none", "mtp", li),
                ParamSpec(f"{p}eh_proj.weight", (f"{hp}eh_proj.weight",), (h, 2 * h), "col", "mtp", li),
            ]
            tp = f"{p}transformer_layer."
            out += _attn(s, tp, hp, li, "mtp", te_names) + _mlp(s, tp, hp, li, "mtp")
            out.append(ParamSpec(f"{p}final_layernorm.weight", (f"{hp}shared_head.norm.weight",), (h,), "none", "mtp", li))
    return out


def mtp_shared_hf_names(s: ModelSpec) -> list[tuple[str, str]]:
    """HF MTP tensors that megatron shares with the main model: ``(mtp copy, main tensor)`` pairs."""
    out = []
    for k in range(s.num_mtp_layers):
        hp = f"model.layers.{s.num_layers + k}."
        out.append((f"{hp}embed_tokens.weight", "model.embed_tokens.weight"))
        out.append((f"{hp}shared_head.head.weight", "model.embed_tokens.weight" if s.tie_word_embeddings else "lm_head.weight"))
    return out


__all__.append("mtp_shared_hf_names")

# ---------------------------------------------------------------------------------------------- renaming
#: THE TE <-> local parameter-name map (adnanny-megatron imports it; it must not keep a copy): TE specs fuse a
#: norm into the linear layer that follows it, local specs keep the norm as its own module.
#: ``(suffix in the local spec, suffix in the TE spec, which layers)``; kinds: "mla" = MLA attention layers,
#: "mha" = standard-attention layers, "dense" = layers whose MLP is dense (not MoE).
TE_FUSED_NORMS: tuple[tuple[str, str, str], ...] = (
    ("self_attention.q_layernorm.weight", "self_attention.linear_q_up_proj.layer_norm_weight", "mla"),
    ("self_attention.kv_layernorm.weight", "self_attention.linear_kv_up_proj.layer_norm_weight", "mla"),
    ("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight", "mha"),
    ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight", "dense"),
)


def _fused_applies(kind: str, *, mla: bool, moe_layer: bool) -> bool:
    return (kind == "mla" and mla) or (kind == "mha" and not mla) or (kind == "dense" and not moe_layer)


def local_to_te_name(name: str, *, mla: bool, moe_layer: bool) -> str:
    """Rename a local-spec parameter (any prefix) to its TE-spec name: norms fused into the next linear."""
    for local, te, kind in TE_FUSED_NORMS:
        if name.endswith(local) and _fused_applies(kind, mla=mla, moe_layer=moe_layer):
            return name[: -len(local)] + te
    return name


def te_to_local_name(name: str, *, mla: bool, moe_layer: bool) -> str:
    """Inverse of :func:`local_to_te_name`."""
    for local, te, kind in TE_FUSED_NORMS:
        if name.endswith(te) and _fused_applies(kind, mla=mla, moe_layer=moe_layer):
            return name[: -len(te)] + local
    return name


def _layer_suffix_te(s: ModelSpec, suffix: str, layer: int | None) -> str:
    """TE name of a within-layer suffix (no expert renaming)."""
    moe_layer = layer is not None and s.is_moe_layer(layer)
    return local_to_te_name(suffix, mla=s.mla, moe_layer=moe_layer)


def _split_layer(name: str) -> tuple[str, str] | None:
    """``decoder.layers.3.x.y`` -> (``decoder.layers.3.``, ``x.y``); MTP transformer layers likewise."""
    for head in ("decoder.layers.", "mtp.layers."):
        if name.startswith(head):
            idx, rest = name[len(head):].split(".", 1)
            prefix = f"{head}{idx}."
            if head == "mtp.layers." and rest.startswith("transformer_layer."):
                return prefix + "transformer_layer.", rest[len("transformer_layer."):]
            if head == "mtp.layers.":
                return None
            return prefix, rest
    return None


def te_name(s: ModelSpec, p: ParamSpec) -> str:
    """Module path of ``p`` under TransformerEngine naming (global indices)."""
    parts = _split_layer(p.name)
    if parts is None:
        return p.name
    prefix, suffix = parts
    if p.expert is not None:
        lin = suffix.rsplit(".", 2)[-2]  # linear_fc1 / linear_fc2
        return f"{prefix}mlp.experts.{lin}.weight{p.expert}"
    return prefix + _layer_suffix_te(s, suffix, p.layer)


def local_module_name(s: ModelSpec, p: ParamSpec, *, te_names: bool, layer_offset: int, expert_offset: int) -> str:
    """Name inside one rank's module state dict (legacy per-rank files): local layer / expert indices."""
    name = te_name(s, p) if te_names else p.name
    if p.name.startswith("decoder.layers.") and p.layer is not None:
        name = name.replace(f"decoder.layers.{p.layer}.", f"decoder.layers.{p.layer - layer_offset}.", 1)
    if p.expert is not None:
        j = p.expert - expert_offset
        if te_names:
            name = name[: -len(str(p.expert))] + str(j)
        else:
            name = name.replace(f"local_experts.{p.expert}.", f"local_experts.{j}.", 1)
    return name


def sharded_key(s: ModelSpec, p: ParamSpec, *, te_names: bool) -> tuple[str, int]:
    """``(dist_checkpointing key, number of prepended axes)`` as megatron-core's ``sharded_state_dict`` makes them.

    Prepended axes, outermost first: the layer axis (homogeneous models only), then the expert axis.
    """
    parts = _split_layer(p.name)
    if parts is None:
        return p.name, 0
    prefix, suffix = parts
    if not s.mla:  # standard attention: local spec maps its norms to the TE names too
        suffix = _layer_suffix_te(s, suffix, p.layer)
    elif te_names:
        suffix = _layer_suffix_te(s, suffix, p.layer)
    axes = 0
    if prefix.startswith("decoder.layers.") and s.homogeneous:
        prefix, axes = "decoder.layers.", 1
    if p.expert is not None:
        lin = suffix.rsplit(".", 2)[-2]
        suffix, axes = f"mlp.experts.experts.{lin}.weight", axes + 1
    return prefix + suffix, axes
