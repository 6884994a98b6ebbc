"""adnanny-sft's backend factory for the Megatron backend (entry point ``adnanny_sft.backends`` -> ``megatron``).

adnanny-sft finds training backends through the entry-point group ``adnanny_sft.backends``; this package
registers ``megatron = "adnanny_megatron.sft_backend:build_megatron_backend"`` (pyproject.toml). The factory
takes plain arguments only — the same keywords sft passes to its HF factory plus the Megatron ones below — so
sft needs no import of this package and there is no import cycle (adnanny-megatron depends on adnanny-sft, not
the reverse).

It runs once per rank under ``torchrun`` (one process without torchrun is a 1-rank world):

1. process groups for ``layout`` (``"pp2,ep2"``, ``"paper"``…; DP = world / (TP·PP)) with the configured
   timeout (:data:`adnanny_megatron.parallel.DEFAULT_TIMEOUT_MINUTES` by default);
2. the model from an HF ``config.json`` dict (random init from ``seed``) or an HF directory, whose weights are
   converted once by adnanny-ckpt (``hf_to_mcore``; rank 0 converts into ``convert_dir``, resumable, the other
   ranks wait) and loaded with dist_checkpointing's reshard; uneven stages from ``stage_layers`` ("2,3,2" or
   "plan" = adnanny-ckpt's ``plan_layout``);
3. megatron's optimizer with the §4.1.3 stub and the sft schedule (warm-up + constant/linear/cosine).

AdamW betas default to the HF backend's (0.9, 0.999), so the two backends produce the same loss curve.
``selective_head`` (an HF-backend speed option) does not apply: megatron's vocab-parallel cross entropy never
materialises full-vocabulary log-softmax on one rank.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["build_megatron_backend", "resolve_device"]


def resolve_device(device: str) -> str:
    """``cpu`` / ``cuda`` / ``auto`` -> the device megatron will use here (megatron uses CUDA whenever present)."""
    import torch

    if device not in ("cpu", "cuda", "auto"):
        raise AdNannyMegatronError(f"`device` must be cpu, cuda or auto, got {device!r}")
    have = torch.cuda.is_available()
    if device == "cuda" and not have:
        raise AdNannyMegatronError("`device` = 'cuda' but no CUDA device is visible; use 'cpu' or 'auto'")
    if device == "cpu" and have:
        raise AdNannyMegatronError(
            "`device` = 'cpu' with CUDA visible: megatron-core trains on the GPUs whenever CUDA is present; use "
            "'cuda'/'auto', or hide the GPUs with CUDA_VISIBLE_DEVICES=''"
        )
    return "cuda" if have else "cpu"


def _default_convert_dir(model_dir: Path, layout: str) -> Path:
    key = hashlib.sha256(f"{model_dir.resolve()}|{layout}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"adnanny-mcore-{key}"


def _convert(model_dir: Path, out: Path, sizes: Any) -> Path:
    """Rank 0 converts ``model_dir`` (resumable: an existing complete conversion is reused); all ranks wait."""
    import torch.distributed as dist

    from adnanny_ckpt import hf_to_mcore

    marker = out / "latest_checkpointed_iteration.txt"
    if dist.get_rank() == 0 and not marker.is_file():
        hf_to_mcore(str(model_dir), str(out), pp=sizes.pp, ep=sizes.ep, tp=sizes.tp, progress=False)
    dist.barrier()
    it = marker.read_text().strip()
    return out / ("release" if it == "release" else f"iter_{int(it):07d}")


def build_megatron_backend(
    model: str | Path | dict[str, Any],
    *,
    dtype: str = "float32",
    seed: int = 0,
    lora: Any = None,
    device: str = "auto",
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    warmup_steps: int = 0,
    total_steps: int = 1,
    lr_schedule: str = "constant",
    min_lr_ratio: float = 0.1,
    selective_head: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layout: str = "tp1",
    stage_layers: str | None = None,
    micro_batch_size: int = 1,
    timeout_minutes: float | None = None,
    convert_dir: str | Path | None = None,
    moe_optimizer: str = "stub",
    use_distributed_optimizer: bool = False,
    mtp: bool | None = None,
    mtp_loss_weight: float = 0.0,
    core_attention: str = "auto",
) -> Any:
    """Build a :class:`~adnanny_megatron.backend.MegatronBackend` for adnanny-sft from plain arguments.

    ``model``: an HF config dict (random init) or an HF model directory (weights converted by adnanny-ckpt).
    ``dtype``: ``float32`` or ``bfloat16`` (megatron trains bf16 with fp32 main weights). ``lora`` must be None
    (full fine-tuning only). ``mtp`` / ``mtp_loss_weight``: DeepSeek's MTP module (built when config.json has
    ``num_nextn_predict_layers`` unless ``mtp=False``; trained only with a positive weight). See the module
    docstring for the rest.
    """
    del selective_head  # not applicable (module docstring)
    from adnanny_megatron import parallel, provider
    from adnanny_megatron.backend import MegatronBackend, TrainSettings
    from adnanny_megatron.optim import OptimSettings

    if lora is not None:
        raise AdNannyMegatronError("the Megatron backend trains all weights: set `lora = false` (LoRA is HF-only)")
    bf16 = {"float32": False, "bfloat16": True}.get(dtype)
    if bf16 is None:
        raise AdNannyMegatronError(f"`dtype` {dtype!r} unsupported by the Megatron backend: float32 or bfloat16")
    resolve_device(device)
    sizes = parallel.sizes_from_layout(layout, int(os.environ.get("WORLD_SIZE", "1")))
    parallel.initialize(sizes, seed=seed, timeout_minutes=timeout_minutes or parallel.DEFAULT_TIMEOUT_MINUTES)
    if isinstance(model, dict):
        hf_cfg, ckpt = dict(model), None
    else:
        model_dir = Path(model)
        hf_cfg = provider.load_hf_config(model_dir)
        has_weights = model_dir.is_dir() and any(model_dir.glob("*.safetensors"))
        ckpt = _convert(model_dir, Path(convert_dir) if convert_dir else _default_convert_dir(model_dir, layout),
                        sizes) if has_weights else None
    pipeline_layout = None
    if stage_layers:
        from adnanny_megatron.train import TrainConfig, stage_layout

        pipeline_layout = stage_layout(TrainConfig(layout=layout, stage_layers=stage_layers, mtp=mtp), hf_cfg, sizes)
    rule = provider.checkpoint_vocab_rule(ckpt) if ckpt is not None else None
    spec = provider.transformer_config_from_hf(
        hf_cfg, bf16=bf16, tp=sizes.tp, pp=sizes.pp, ep=sizes.ep, pipeline_layout=pipeline_layout, mtp=mtp,
        core_attention=core_attention, **({} if rule is None else {"make_vocab_size_divisible_by": rule}))
    backend = MegatronBackend(
        spec,
        OptimSettings(lr=lr, weight_decay=weight_decay, clip_grad=max_grad_norm, adam_beta1=betas[0],
                      adam_beta2=betas[1], adam_eps=eps, moe_optimizer=moe_optimizer,
                      use_distributed_optimizer=use_distributed_optimizer),
        TrainSettings(micro_batch_size=micro_batch_size, warmup_steps=warmup_steps, total_steps=total_steps,
                      lr_schedule=lr_schedule, min_lr_ratio=min_lr_ratio, mtp_loss_weight=mtp_loss_weight),
        seed=seed,
    )
    if ckpt is not None:
        backend.load_model_weights(ckpt)
    return backend
