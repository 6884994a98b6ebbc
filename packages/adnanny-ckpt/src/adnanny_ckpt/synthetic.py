"""Synthetic DeepSeek-V3 checkpoints in the real HF format, for tests and benchmarks.

``tiny_deepseek_v3_config`` returns a ``config.json`` dict with every field of DeepSeek-V3's release (MLA, YaRN
``rope_scaling`` with ``mscale_all_dim``, sigmoid ``noaux_tc`` group routing, FP8 ``quantization_config``) at a
size a CPU runs in milliseconds: 1 dense + 3 MoE layers, 8 routed experts + 1 shared, 4 groups, top-2 groups,
top-4 experts (topk = 2·topk_group, so HF's and Megatron's group-limited routing pick the same experts).
Its dimensions are chosen so that almost no weight is a multiple of 128: FP8 files then exercise *ragged* edge
blocks, as DeepSeek's own ``kv_a_proj_with_mqa`` ([576, 7168]) does.

``write_synthetic_checkpoint`` streams random weights for such a config to disk, tensor by tensor, as the
release does: FP8 ``float8_e4m3fn`` + ``weight_scale_inv`` for the projection linears, BF16 for the rest, FP32
``e_score_correction_bias``; optional MTP layers as ``model.layers.{num_hidden_layers + k}.*``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adnanny_ckpt.errors import ConfigMismatchError
from adnanny_ckpt.fp8 import FP8_QUANTIZATION_CONFIG
from adnanny_ckpt.inventory import hf_tensor_shapes

if TYPE_CHECKING:
    import torch

__all__ = ["tiny_deepseek_v3_config", "deepseek_v3_config", "hf_tensor_shapes", "write_synthetic_checkpoint"]



def deepseek_v3_config() -> dict[str, Any]:
    """DeepSeek-V3's published ``config.json`` values (671B, 61 layers, 3 dense, 256 experts, MTP 1)."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 3,
        "hidden_act": "silu",
        "hidden_size": 7168,
        "initializer_range": 0.02,
        "intermediate_size": 18432,
        "kv_lora_rank": 512,
        "max_position_embeddings": 163840,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 2048,
        "moe_layer_freq": 1,
        "n_group": 8,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 61,
        "num_key_value_heads": 128,
        "num_nextn_predict_layers": 1,
        "q_lora_rank": 1536,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "quantization_config": dict(FP8_QUANTIZATION_CONFIG),
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "tie_word_embeddings": False,
        "topk_group": 4,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "v_head_dim": 128,
        "vocab_size": 129280,
    }


def tiny_deepseek_v3_config(
    hidden_size: int = 128,
    vocab_size: int = 512,
    *,
    num_hidden_layers: int = 4,
    first_k_dense_replace: int = 1,
    n_routed_experts: int = 8,
    n_shared_experts: int = 1,
    n_group: int = 4,
    topk_group: int = 2,
    num_experts_per_tok: int = 4,
    num_attention_heads: int = 4,
    q_lora_rank: int | None = 96,
    kv_lora_rank: int = 64,
    qk_nope_head_dim: int = 32,
    qk_rope_head_dim: int = 16,
    v_head_dim: int = 32,
    intermediate_size: int = 320,
    moe_intermediate_size: int = 96,
    num_nextn_predict_layers: int = 0,
    max_position_embeddings: int = 2048,
    fp8: bool = True,
) -> dict[str, Any]:
    """A DeepSeek-V3-shaped ``config.json`` dict small enough for CPU tests (see module docstring).

    ``fp8=False`` drops ``quantization_config`` (a BF16 checkpoint). Defaults: 4 layers (layer 0 dense, 1–3 MoE),
    8 routed + 1 shared expert, 4 groups / top-2 groups / top-4, YaRN factor 40 with ``mscale_all_dim`` 1.
    """
    if n_routed_experts % n_group:
        raise ConfigMismatchError(
            f"`n_routed_experts` ({n_routed_experts}) must be divisible by `n_group` ({n_group})."
        )
    if not 0 <= first_k_dense_replace <= num_hidden_layers:
        raise ConfigMismatchError(
            f"`first_k_dense_replace` must be in [0, num_hidden_layers={num_hidden_layers}]; got {first_k_dense_replace}."
        )
    cfg = deepseek_v3_config()
    cfg.update(
        hidden_size=hidden_size,
        vocab_size=vocab_size,
        num_hidden_layers=num_hidden_layers,
        first_k_dense_replace=first_k_dense_replace,
        n_routed_experts=n_routed_experts,
        n_shared_experts=n_shared_experts,
        n_group=n_group,
        topk_group=topk_group,
        num_experts_per_tok=num_experts_per_tok,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=kv_lora_rank,
        qk_nope_head_dim=qk_nope_head_dim,
        qk_rope_head_dim=qk_rope_head_dim,
        v_head_dim=v_head_dim,
        intermediate_size=intermediate_size,
        moe_intermediate_size=moe_intermediate_size,
        num_nextn_predict_layers=num_nextn_predict_layers,
        max_position_embeddings=max_position_embeddings,
    )
    cfg["rope_scaling"] = dict(cfg["rope_scaling"], original_max_position_embeddings=max_position_embeddings // 4,
                               factor=4)
    if not fp8:
        cfg.pop("quantization_config")
    return cfg


def _random_tensor(name: str, shape: tuple[int, ...], gen: "torch.Generator") -> "torch.Tensor":
    import torch

    if name.endswith("e_score_correction_bias"):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * 0.01
    if len(shape) == 1:  # norms: around 1, not exactly 1, so a mix-up between norms is visible
        return (1.0 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
    return (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)


def _random_fp8(shape: tuple[int, ...], gen: "torch.Generator") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Random FP8 payload + scales without quantizing a float tensor first (fast for GB-sized benchmarks)."""
    import torch

    from adnanny_ckpt.fp8 import scale_shape

    raw = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    raw[(raw & 0x7F) == 0x7F] = 0  # 0x7F / 0xFF are NaN in e4m3fn
    q = raw.view(torch.float8_e4m3fn)
    s = torch.rand(scale_shape(shape), generator=gen, dtype=torch.float32) * 1e-4 + 1e-5
    return q, s


def _seed_name(name: str, n_layers: int) -> str:
    """MTP copies of the embedding / head get the main tensors' values, as in DeepSeek's release."""
    if name.startswith("model.layers.") and int(name.split(".")[2]) >= n_layers:
        if name.endswith(".embed_tokens.weight"):
            return "model.embed_tokens.weight"
        if name.endswith(".shared_head.head.weight"):
            return "lm_head.weight"
    return name


def _generator(seed: int, name: str) -> "torch.Generator":
    """One generator per tensor: values depend on (seed, name) only, not on file order."""
    import zlib

    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def write_synthetic_checkpoint(
    out_dir: str | os.PathLike[str],
    config: dict[str, Any],
    dtype: str = "fp8",
    seed: int = 0,
    max_shard_bytes: int = 64 << 20,
    *,
    fast_fp8: bool = False,
    bf16_names: tuple[str, ...] = (),
) -> Path:
    """Write random weights for ``config`` as a real HF checkpoint dir (config.json, shards, index).

    ``dtype="fp8"``: projection linears as ``float8_e4m3fn`` + FP32 ``weight_scale_inv`` [ceil(M/128),
    ceil(N/128)] obtained by quantizing BF16 random weights (``fast_fp8=True`` draws the FP8 bytes and scales
    directly instead — same format, used by the GB-sized benchmarks); everything else as in DeepSeek's release.
    ``dtype="bf16"``: all BF16 (``e_score_correction_bias`` FP32), no ``quantization_config``.
    Deterministic in ``seed``; streams one tensor at a time.

    ``bf16_names``: name suffixes stored in BF16 even in an FP8 checkpoint (e.g. ``("eh_proj.weight",)``): releases
    differ in which projections they quantize (the MTP ``eh_proj`` is FP8 in some, BF16 in others), and
    conversion must follow what the files say, so tests write both forms.
    """
    import torch

    from adnanny_ckpt.fp8 import keeps_bf16, quantize_blocks, scale_inv_name
    from adnanny_ckpt.safetensors_io import ShardedSafetensorsWriter, atomic_write_json

    if dtype not in ("fp8", "bf16"):
        raise ConfigMismatchError(f"`dtype` must be 'fp8' or 'bf16'; got {dtype!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    if dtype == "fp8":
        cfg["quantization_config"] = dict(cfg.get("quantization_config") or FP8_QUANTIZATION_CONFIG)
        block = tuple(cfg["quantization_config"]["weight_block_size"])
    else:
        cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "bfloat16"
    n_layers = cfg["num_hidden_layers"]
    with ShardedSafetensorsWriter(out, max_shard_bytes=max_shard_bytes) as w:
        for name, shape in hf_tensor_shapes(cfg).items():
            gen = _generator(seed, _seed_name(name, n_layers))
            if dtype == "fp8" and not keeps_bf16(name) and not name.endswith(tuple(bf16_names)):
                if fast_fp8:
                    q, s = _random_fp8(shape, gen)
                else:
                    q, s = quantize_blocks(_random_tensor(name, shape, gen), block, name=name)  # type: ignore[arg-type]
                w.add(name, q)
                w.add(scale_inv_name(name), s)
            else:
                w.add(name, _random_tensor(name, shape, gen))
    atomic_write_json(out / "config.json", cfg)
    gen_cfg = {"bos_token_id": cfg.get("bos_token_id", 0), "eos_token_id": cfg.get("eos_token_id", 1)}
    atomic_write_json(out / "generation_config.json", gen_cfg)
    return out


def load_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
