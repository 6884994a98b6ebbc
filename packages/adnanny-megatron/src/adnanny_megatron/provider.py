"""Model provider: a megatron-core ``GPTModel`` built from a HuggingFace ``config.json``.

What the paper asks (§4.1.2, §4.1.4): the Megatron model must be numerically the HF DeepSeek-V3/R1 model —
same rotary scaling, norm epsilon, MoE gating — trained with BF16 compute and FP32 accumulation.

How each HF DeepSeek-V3 field lands in megatron-core 0.16.1 (``MLATransformerConfig``):

- ``first_k_dense_replace`` -> ``moe_layer_freq`` list ``[0]*k + [1]*(L-k)`` (dense first-k layers).
- ``scoring_func="sigmoid"`` + ``e_score_correction_bias`` -> ``moe_router_score_function="sigmoid"``,
  ``moe_router_enable_expert_bias=True``; ``n_group``/``topk_group`` -> group-limited top-k;
  ``routed_scaling_factor`` -> ``moe_router_topk_scaling_factor``; router in fp32 like HF.
  Trap: HF scores a group by the sum of its top-2 experts while megatron sums the top ``topk/topk_group``;
  they agree only when ``num_experts_per_tok == 2 * topk_group`` (true for V3: 8 and 4), so anything else
  is refused here instead of silently diverging.
- ``n_shared_experts * moe_intermediate_size`` -> ``moe_shared_expert_intermediate_size``.
- YaRN: ``factor``, ``original_max_position_embeddings``, ``beta_fast``/``beta_slow``, ``mscale`` and
  ``mscale_all_dim`` are all copied (megatron defaults ``mscale_all_dim`` to 0; V3 uses 1 — without it
  the softmax scale differs).
- ``kv_channels = v_head_dim`` so the local core attention (see :mod:`adnanny_megatron.compat`) is exact.
- The expert-bias update (DeepSeek's aux-loss-free balancing) is a *training* rule HF does not have; its
  rate defaults to 0 here so a fine-tune matches a plain HF loop; pass ``expert_bias_update_rate`` to enable.

Precision: on GPU ``bf16=True`` params with ``grad_reduce_in_fp32`` DDP buffers and fp32 main params in
the optimizer (see :mod:`adnanny_megatron.optim`); on CPU everything is fp32 (the parity/loss checks need
it, and CPU bf16 matmuls are slow).

Dense Llama-family models (SmolLM2) use the plain ``TransformerConfig`` with RoPE and GQA.

One contract, owned by adnanny-ckpt (the house plan: layout and names are ckpt's): the architecture facts
(:class:`adnanny_ckpt.names.ModelSpec`, from ``model_spec_from_hf_config`` — which also decides the supported
``model_type`` values), the TE <-> local parameter-name map (``adnanny_ckpt.names.local_to_te_name`` /
``te_to_local_name``, re-exported here) and the vocabulary-padding rule (``adnanny_ckpt.names.padded_vocab_size``
with ``VOCAB_DIVISIBLE_BY`` = 128, times TP). :class:`BuildSpec` only adds what megatron needs to *build* the
model (its ``TransformerConfig`` and ``GPTModel`` arguments); ``tests/test_contracts.py`` fails if a second
``ModelSpec`` or name map appears in this package.

Padded vocabulary rows (zeros after conversion) would enter the softmax and change the loss, so
:func:`build_model` masks their logits to ``-inf`` (a forward hook on the output layer): losses, log-probs
and gradients equal the unpadded model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_ckpt.errors import ConfigMismatchError
from adnanny_ckpt.names import (
    SUPPORTED_MODEL_TYPES,
    VOCAB_DIVISIBLE_BY,
    ModelSpec,
    local_to_te_name,
    model_spec_from_hf_config,
    padded_vocab_size,
    te_to_local_name,
)

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = [
    "BuildSpec",
    "build_model",
    "checkpoint_vocab_rule",
    "load_hf_config",
    "local_to_te_name",
    "model_family",
    "te_to_local_name",
    "transformer_config_from_hf",
]


def load_hf_config(hf: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Read ``config.json`` from an HF model dir (or pass a dict through)."""
    if isinstance(hf, dict):
        return dict(hf)
    path = Path(hf)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise AdNannyMegatronError(f"no HF config at `{path}`: pass an HF model directory with config.json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdNannyMegatronError(f"`{path}` is not valid JSON: {exc}") from exc


def arch_spec(hf_config: dict[str, Any]) -> ModelSpec:
    """adnanny-ckpt's :class:`~adnanny_ckpt.names.ModelSpec` of ``hf_config`` (the one architecture contract).

    An unsupported ``model_type`` is refused here with the same set adnanny-ckpt converts.
    """
    mt = hf_config.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise AdNannyMegatronError(
            f"unsupported `model_type` {mt!r} in config.json: supported are {sorted(SUPPORTED_MODEL_TYPES)} "
            "(adnanny-ckpt's set)"
        )
    try:
        return model_spec_from_hf_config(hf_config)
    except ConfigMismatchError as exc:
        missing = str(exc).split("has no `", 1)
        if len(missing) == 2:  # keep this package's wording for a missing key
            raise AdNannyMegatronError(f"config.json lacks required key `{missing[1].split('`')[0]}`") from exc
        raise AdNannyMegatronError(str(exc)) from exc


def model_family(hf_config: dict[str, Any]) -> str:
    """``"deepseek_v3"`` or ``"llama"`` (adnanny-ckpt's family); anything else is refused naming the type."""
    return arch_spec(hf_config).family


def checkpoint_vocab_rule(directory: str | Path) -> int | None:
    """``make_vocab_size_divisible_by`` recorded by adnanny-ckpt's ``hf_to_mcore`` for a checkpoint dir.

    Looks for ``adnanny_ckpt.json`` in ``directory`` or its parent (the iteration dir's parent); ``None``
    when there is none (e.g. a checkpoint saved by :class:`~adnanny_megatron.backend.MegatronBackend`).
    """
    for cand in (Path(directory) / "adnanny_ckpt.json", Path(directory).parent / "adnanny_ckpt.json"):
        if cand.is_file():
            try:
                rec = json.loads(cand.read_text())
            except json.JSONDecodeError as exc:
                raise AdNannyMegatronError(f"`{cand}` is not valid JSON: {exc}") from exc
            value = (rec.get("options") or {}).get("make_vocab_size_divisible_by")
            return int(value) if value is not None else None
    return None


def rope_settings(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """``(rope_theta, scaling)`` from either the classic keys (``rope_theta`` + ``rope_scaling``) or
    transformers 5's ``rope_parameters`` (which holds the theta and the scaling type together)."""
    params = cfg.get("rope_parameters") or {}
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    scaling = cfg.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", params.get("type", "default")) not in ("default", None):
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return theta, scaling


def _req(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg or cfg[key] is None:
        raise AdNannyMegatronError(f"config.json lacks required key `{key}`")
    return cfg[key]


@dataclass(frozen=True)
class BuildSpec:
    """What megatron needs to build the model: adnanny-ckpt's architecture spec (``arch``) plus the megatron
    config and ``GPTModel`` arguments. Vocabulary facts come from ``arch`` and ckpt's padding rule."""

    arch: ModelSpec
    config: Any  # TransformerConfig / MLATransformerConfig
    padded_vocab_size: int
    max_sequence_length: int
    position_embedding_type: str
    rotary_base: float
    use_te: bool
    core_attention: str = "local"  #: "local" (megatron's DotProductAttention) | "sdpa" (torch SDPA); local spec only

    @property
    def family(self) -> str:
        return self.arch.family

    @property
    def vocab_size(self) -> int:
        """The real vocabulary (HF ``vocab_size``); logits beyond it are padding and masked."""
        return self.arch.vocab_size

    @property
    def tie_embeddings(self) -> bool:
        return self.arch.tie_word_embeddings


def _megatron_config(cls: Any, pipeline_layout: list[list[str]] | None, **kwargs: Any) -> Any:
    """``cls(**kwargs)``; megatron-core's refusals (asserts / ValueErrors in ``__post_init__``) become errors
    that say what was refused."""
    try:
        return cls(**kwargs)
    except (AssertionError, ValueError) as exc:
        what = f"pipeline layout {pipeline_layout}" if pipeline_layout is not None else "the configuration"
        raise AdNannyMegatronError(f"megatron-core refused {what}: {exc}") from exc


def transformer_config_from_hf(
    hf: str | Path | dict[str, Any],
    *,
    bf16: bool | None = None,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    sequence_parallel: bool | None = None,
    use_te: bool | None = None,
    expert_bias_update_rate: float = 0.0,
    num_layers_in_first_pipeline_stage: int | None = None,
    num_layers_in_last_pipeline_stage: int | None = None,
    token_dispatcher: str | None = None,
    make_vocab_size_divisible_by: int = VOCAB_DIVISIBLE_BY,
    pipeline_layout: list[list[str]] | None = None,
    mtp: bool | None = None,
    core_attention: str = "auto",
    moe_grouped_gemm: bool | None = None,
) -> BuildSpec:
    """Map an HF config to a megatron config (see the module docstring for the field mapping).

    ``bf16`` defaults to True on CUDA and False on CPU; ``use_te`` defaults to "TE is installed";
    ``token_dispatcher`` (MoE) defaults to "alltoall" on CUDA and "allgather" on CPU;
    ``sequence_parallel`` defaults to ``tp > 1`` with TE and to False on the local spec (whose torch norms
    refuse SP). Megatron refuses to *train* MoE with TP but without SP, so the local spec trains MoE
    models with TP=1 (experts are spread with EP instead, as in the paper's layout); forward-only use
    (parity) and dense models work with any TP.

    The vocabulary is padded with adnanny-ckpt's rule (``make_vocab_size_divisible_by`` · ``tp``, default
    128 as ckpt's converter): pass the value the checkpoint was converted with
    (:func:`checkpoint_vocab_rule` reads it).

    Speed without TE (local spec): ``core_attention`` = ``"sdpa"`` runs attention through torch's
    ``scaled_dot_product_attention`` (no T×T scores), ``"local"`` megatron's reference attention; ``"auto"``
    = sdpa on CUDA, local on CPU. ``moe_grouped_gemm`` runs each rank's experts as one grouped GEMM
    (megatron's GroupedMLP with torch's grouped matmul, bf16 only); ``None`` = on for bf16 on CUDA.

    ``mtp``: build DeepSeek's multi-token-prediction module (``num_nextn_predict_layers`` layers on the last
    stage: enorm/hnorm, ``eh_proj`` over [embedding; hidden], one transformer layer, its final norm, the shared
    head). ``None`` = when config.json has ``num_nextn_predict_layers`` > 0. Its weights then load from and save
    to the checkpoint's ``mtp.*`` tensors (adnanny-ckpt copies them); the backend trains it only with a positive
    ``TrainSettings.mtp_loss_weight``. Forward passes without labels (parity) need ``mtp=False``.

    ``pipeline_layout`` (megatron-core's ``pipeline_model_parallel_layout``: per stage ``"embedding"``,
    ``"decoder"``…, ``"mtp"``, ``"loss"``) places any number of layers on each stage — build it from an
    adnanny-ckpt ``ParallelLayout`` with :func:`adnanny_megatron.layout.megatron_layout`. It excludes the
    first/last-stage counts; megatron's own validation errors are re-raised naming the layout.
    """
    import torch
    import torch.nn.functional as F

    from adnanny_megatron import compat

    compat.import_megatron()
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    cfg = load_hf_config(hf)
    arch = arch_spec(cfg)
    family = arch.family
    padded = padded_vocab_size(arch.vocab_size, make_vocab_size_divisible_by, tp)
    if use_te is None:
        use_te = compat.have_te()
    if sequence_parallel is None:
        sequence_parallel = tp > 1 and use_te
    if sequence_parallel and not use_te:
        raise AdNannyMegatronError(
            "`sequence_parallel`=True needs TransformerEngine norms: megatron's local spec falls back to torch "
            "norms (no Apex here), which refuse sequence parallelism. Install the `te` extra or keep it off."
        )
    if bf16 is None:
        bf16 = torch.cuda.is_available()
    if core_attention == "auto":
        core_attention = "sdpa" if torch.cuda.is_available() else "local"
    if core_attention not in ("local", "sdpa"):
        raise AdNannyMegatronError(f"`core_attention` must be auto, local or sdpa, got {core_attention!r}")
    if moe_grouped_gemm is None:
        moe_grouped_gemm = bool(bf16) and torch.cuda.is_available()
    if moe_grouped_gemm and not bf16:
        raise AdNannyMegatronError("`moe_grouped_gemm` needs bf16 (megatron's GroupedMLP supports only bf16)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise AdNannyMegatronError(f"`hidden_act` {cfg.get('hidden_act')!r} unsupported: only 'silu'")
    L = int(_req(cfg, "num_hidden_layers"))
    common: dict[str, Any] = dict(
        num_layers=L,
        hidden_size=int(_req(cfg, "hidden_size")),
        ffn_hidden_size=int(_req(cfg, "intermediate_size")),
        num_attention_heads=int(_req(cfg, "num_attention_heads")),
        layernorm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        attention_softmax_in_fp32=True,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        sequence_parallel=sequence_parallel,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        num_layers_in_first_pipeline_stage=num_layers_in_first_pipeline_stage,
        num_layers_in_last_pipeline_stage=num_layers_in_last_pipeline_stage,
    )
    if pipeline_layout is not None:
        if num_layers_in_first_pipeline_stage is not None or num_layers_in_last_pipeline_stage is not None:
            raise AdNannyMegatronError(
                "`pipeline_layout` already places every layer: drop `num_layers_in_first_pipeline_stage` / "
                "`num_layers_in_last_pipeline_stage`"
            )
        if len(pipeline_layout) != pp:
            raise AdNannyMegatronError(f"`pipeline_layout` has {len(pipeline_layout)} stages but `pp`={pp}")
        common["pipeline_model_parallel_layout"] = [list(st) for st in pipeline_layout]
    if mtp is None:
        mtp = arch.num_mtp_layers > 0
    if mtp:
        if arch.num_mtp_layers < 1:
            raise AdNannyMegatronError("`mtp`=True but config.json has no `num_nextn_predict_layers`")
        common["mtp_num_layers"] = arch.num_mtp_layers
        # the backend computes the MTP loss itself (sample-weighted, TrainSettings.mtp_loss_weight); megatron's
        # own token-mean MTP loss is kept at zero weight so it adds no gradient
        common["mtp_loss_scaling_factor"] = 0.0
    if family == "llama":
        heads = common["num_attention_heads"]
        head_dim = int(cfg.get("head_dim") or common["hidden_size"] // heads)
        theta, scaling = rope_settings(cfg)
        if scaling:
            raise AdNannyMegatronError(
                f"`rope_scaling` {scaling!r} on a Llama-family config is not supported"
            )
        config = _megatron_config(
            TransformerConfig, pipeline_layout,
            **common,
            num_query_groups=int(cfg.get("num_key_value_heads") or heads),
            kv_channels=head_dim,
        )
        return BuildSpec(
            arch=arch,
            config=config,
            padded_vocab_size=padded,
            max_sequence_length=int(cfg.get("max_position_embeddings", 2048)),
            position_embedding_type="rope",
            rotary_base=theta,
            use_te=use_te,
            core_attention=core_attention,
        )

    # ---- DeepSeek-V3
    topk = int(_req(cfg, "num_experts_per_tok"))
    n_group = int(cfg.get("n_group") or 1)
    topk_group = int(cfg.get("topk_group") or 1)
    if n_group > 1 and topk != 2 * topk_group:
        raise AdNannyMegatronError(
            f"group-limited routing differs between HF and megatron unless `num_experts_per_tok` == 2 * "
            f"`topk_group`; got num_experts_per_tok={topk}, topk_group={topk_group}. Use e.g. "
            f"num_experts_per_tok={2 * topk_group}."
        )
    if cfg.get("scoring_func", "sigmoid") != "sigmoid":
        raise AdNannyMegatronError(f"`scoring_func` {cfg.get('scoring_func')!r} unsupported: only 'sigmoid'")
    n_experts = int(_req(cfg, "n_routed_experts"))
    if n_experts % ep:
        raise AdNannyMegatronError(f"`ep`={ep} must divide `n_routed_experts`={n_experts}")
    first_k = int(cfg.get("first_k_dense_replace", 0))
    freq = int(cfg.get("moe_layer_freq", 1))
    pattern = [1 if (i >= first_k and i % freq == 0) else 0 for i in range(L)]
    moe_inter = int(_req(cfg, "moe_intermediate_size"))
    theta, rs = rope_settings(cfg)
    rs = rs or {}
    rope_kind = rs.get("rope_type", rs.get("type")) if rs else None
    if rs and rope_kind != "yarn":
        raise AdNannyMegatronError(f"`rope_scaling.type` {rope_kind!r} unsupported for DeepSeek: only 'yarn'")
    yarn: dict[str, Any] = {}
    if rs:
        yarn = dict(
            rope_type="yarn",
            rotary_scaling_factor=float(rs.get("factor", 1.0)),
            original_max_position_embeddings=int(rs.get("original_max_position_embeddings", 4096)),
            beta_fast=float(rs.get("beta_fast", 32)),
            beta_slow=float(rs.get("beta_slow", 1)),
            mscale=float(rs.get("mscale", 1.0)),
            mscale_all_dim=float(rs.get("mscale_all_dim", 0.0)),
        )
    else:
        yarn = dict(rope_type="rope")
    n_shared = int(cfg.get("n_shared_experts") or 0)
    config = _megatron_config(
        MLATransformerConfig, pipeline_layout,
        **common,
        num_query_groups=common["num_attention_heads"],
        kv_channels=int(_req(cfg, "v_head_dim")),
        q_lora_rank=cfg.get("q_lora_rank"),
        kv_lora_rank=int(_req(cfg, "kv_lora_rank")),
        qk_head_dim=int(_req(cfg, "qk_nope_head_dim")),
        qk_pos_emb_head_dim=int(_req(cfg, "qk_rope_head_dim")),
        v_head_dim=int(_req(cfg, "v_head_dim")),
        qk_layernorm=True,
        rotary_base=theta,
        **yarn,
        num_moe_experts=n_experts,
        moe_layer_freq=pattern,
        moe_ffn_hidden_size=moe_inter,
        moe_shared_expert_intermediate_size=(n_shared * moe_inter) if n_shared else None,
        moe_router_topk=topk,
        moe_router_num_groups=n_group if n_group > 1 else None,
        moe_router_group_topk=topk_group if n_group > 1 else None,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_bias_update_rate=float(expert_bias_update_rate),
        moe_router_topk_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
        moe_router_dtype="fp32",
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_grouped_gemm=bool(moe_grouped_gemm),
        moe_token_dispatcher_type=token_dispatcher or ("alltoall" if torch.cuda.is_available() else "allgather"),
        moe_permute_fusion=False,
    )
    if not cfg.get("norm_topk_prob", True) and topk > 1:
        raise AdNannyMegatronError("`norm_topk_prob`=false is not supported (megatron normalises sigmoid top-k)")
    return BuildSpec(
        arch=arch,
        config=config,
        padded_vocab_size=padded,
        max_sequence_length=int(cfg.get("max_position_embeddings", 4096)),
        position_embedding_type="none",  # MLA applies its own (YaRN) rotary embedding
        rotary_base=theta,
        use_te=use_te,
        core_attention=core_attention,
    )


def layer_spec(spec: BuildSpec, *, pp_rank: int | None = None) -> Any:
    """Decoder block spec for this rank: local (pure megatron) or TE modules."""
    from adnanny_megatron import compat

    compat.apply()
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_decoder_block_spec,
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    attn_cls = compat.SDPADotProductAttention if spec.core_attention == "sdpa" else compat.MLADotProductAttention
    if spec.family == "llama":
        if spec.use_te:
            return get_gpt_layer_with_transformer_engine_spec()
        ls = get_gpt_layer_local_spec(normalization="RMSNorm")
        if spec.core_attention == "sdpa":
            ls.submodules.self_attention.submodules.core_attention = attn_cls
        return ls
    if getattr(spec.config, "moe_grouped_gemm", False) and not spec.use_te:
        compat.install_torch_grouped_gemm()
    block = get_gpt_decoder_block_spec(
        spec.config, use_transformer_engine=spec.use_te, normalization="RMSNorm", pp_rank=pp_rank
    )
    if not spec.use_te:
        for ls in block.layer_specs:
            ls.submodules.self_attention.submodules.core_attention = attn_cls
    return block


def build_model(spec: BuildSpec, *, pre_process: bool | None = None, post_process: bool | None = None) -> Any:
    """Build this rank's ``GPTModel`` chunk (the process groups must already exist)."""
    from adnanny_megatron import compat

    compat.apply()
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage()
    if post_process is None:
        post_process = ps.is_pipeline_last_stage()
    pp_rank = ps.get_pipeline_model_parallel_rank()
    block = layer_spec(spec, pp_rank=pp_rank)
    mtp_spec = None
    if getattr(spec.config, "mtp_num_layers", None):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

        # the MTP transformer layer is built like the model's last decoder layer (MoE for DeepSeek-V3): take the
        # last stage's block spec (with our core attention) so every stage agrees
        last = layer_spec(spec, pp_rank=ps.get_pipeline_model_parallel_world_size() - 1)
        mtp_spec = get_gpt_mtp_block_spec(spec.config, last, use_transformer_engine=spec.use_te, pp_rank=pp_rank)
    model = GPTModel(
        config=spec.config,
        transformer_layer_spec=block,
        mtp_block_spec=mtp_spec,
        vocab_size=spec.padded_vocab_size,
        max_sequence_length=spec.max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=spec.tie_embeddings,
        position_embedding_type=spec.position_embedding_type,
        rotary_base=int(spec.rotary_base),
        parallel_output=True,
    )
    if post_process and spec.padded_vocab_size > spec.vocab_size:
        mask_padded_vocab(model.output_layer, spec.vocab_size, spec.padded_vocab_size)
    return model


def mask_padded_vocab(output_layer: Any, vocab_size: int, padded_vocab_size: int) -> None:
    """Set the logits of padded vocabulary rows to ``-inf`` on this TP rank's vocab slice.

    Why: ckpt pads embedding/head rows with zeros, so unmasked they would add ``exp(0)`` terms to every
    softmax; masked, megatron's vocab-parallel cross entropy, log-probs and gradients are the unpadded
    model's exactly (the masked entries get zero gradient).
    """
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    per_rank = padded_vocab_size // tp
    start = ps.get_tensor_model_parallel_rank() * per_rank
    n_real = max(0, min(per_rank, vocab_size - start))
    if n_real == per_rank:
        return

    def hook(_mod: Any, _inp: Any, out: Any) -> Any:
        logits, bias = out if isinstance(out, tuple) else (out, None)
        logits = logits.clone()
        logits[..., n_real:] = float("-inf")
        return (logits, bias) if isinstance(out, tuple) else logits

    output_layer.register_forward_hook(hook)
