"""``adnanny-megatron train``: the Megatron training entry script, one process per rank under torchrun.

Reads top to bottom: config -> process groups -> model + optimizer (with the §4.1.3 stub) -> optional
initial weights (a torch_dist dir, e.g. adnanny-ckpt's HF->Megatron output) -> resume from the latest
checkpoint in ``save_dir`` -> the step loop -> checkpoints.

Data: ``data = "synthetic"`` draws deterministic token batches (seeded by ``seed`` and the step index,
so a resumed run sees exactly the batches it would have seen), the second half of each sequence being
the target. Real corpora go through adnanny-sft's loop, which drives :class:`MegatronBackend` through the
backend protocol; this script exists to exercise layouts, the optimizer and checkpoints at scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adnanny_megatron.errors import AdNannyMegatronError

__all__ = ["TrainConfig", "load_config", "main", "synthetic_batch"]


@dataclass
class TrainConfig:
    """Every key of ``--config FILE.toml``; each has a CLI flag of the same name."""

    model: str = "tiny-deepseek-v3"  #: HF dir, config.json path, or "tiny-deepseek-v3"
    init: str | None = None  #: torch_dist dir with initial weights (else random init from `seed`)
    layout: str = "tp1"  #: e.g. "pp2,ep2" / "tp2" / "paper"; dp = world / (tp*pp)
    first_stage_layers: int | None = None  #: decoder layers on PP stage 0 (e.g. only the dense ones)
    #: uneven stages: decoder layers per PP stage ("2,3,2"), or "plan" = adnanny-ckpt's plan_layout
    stage_layers: str | None = None
    steps: int = 10
    batch_size: int = 4
    seq_len: int = 32
    micro_batch_size: int = 1
    lr: float = 1e-4
    clip_grad: float = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    seed: int = 1234
    dtype: str = "auto"  #: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16
    moe_optimizer: str = "stub"  #: stub | megatron | drop (drop reproduces the §4.1.3 hang)
    use_distributed_optimizer: bool = False
    data: str = "synthetic"
    save_dir: str | None = None
    save_every: int = 0  #: 0 = only at the end
    resume: bool = True
    log_json: str | None = None  #: rank 0 appends one JSON line per step
    timeout_minutes: float = 30.0  #: process-group timeout (parallel.DEFAULT_TIMEOUT_MINUTES)
    vocab_divisible_by: int | None = None  #: vocab padding unit; None = what `init`'s conversion used, else 128
    mtp: bool | None = None  #: build the MTP module; None = when config.json has num_nextn_predict_layers
    mtp_loss_weight: float = 0.0  #: weight of the MTP loss (0 = MTP loaded/saved but not trained)

    def __post_init__(self) -> None:
        errors = []
        for key in ("steps", "batch_size", "seq_len", "micro_batch_size"):
            if int(getattr(self, key)) < 1:
                errors.append(f"`{key}` must be >= 1, got {getattr(self, key)!r}")
        if self.dtype not in ("auto", "fp32", "bf16"):
            errors.append(f"`dtype` must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.data != "synthetic":
            errors.append(
                f"`data` {self.data!r} unsupported: the train script uses 'synthetic'; train on a corpus "
                "with adnanny-sft using the Megatron backend"
            )
        if self.mtp_loss_weight < 0:
            errors.append(f"`mtp_loss_weight` must be >= 0, got {self.mtp_loss_weight!r}")
        if not self.timeout_minutes > 0:
            errors.append(f"`timeout_minutes` must be > 0, got {self.timeout_minutes!r}")
        if self.stage_layers is not None and self.first_stage_layers is not None:
            errors.append("`stage_layers` already places every layer: drop `first_stage_layers`")
        if self.save_every < 0:
            errors.append(f"`save_every` must be >= 0, got {self.save_every}")
        if errors:
            raise AdNannyMegatronError("invalid train config: " + "; ".join(errors))


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """TOML file + flag overrides -> :class:`TrainConfig`; unknown keys are an error naming them."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise AdNannyMegatronError(f"config file `{p}` not found")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise AdNannyMegatronError(f"config file `{p}` is not valid TOML: {exc}") from exc
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise AdNannyMegatronError(f"unknown key(s) {unknown} in `{path}`; known keys: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**data)


def resolve_hf_config(model: str) -> dict[str, Any]:
    """The HF config dict for ``model`` ("tiny-deepseek-v3" uses adnanny-ckpt's synthetic config)."""
    from adnanny_megatron.provider import load_hf_config

    if model == "tiny-deepseek-v3":
        from adnanny_ckpt.synthetic import tiny_deepseek_v3_config

        return tiny_deepseek_v3_config(fp8=False)
    return load_hf_config(model)


def synthetic_batch(step: int, cfg: TrainConfig, vocab: int) -> Any:
    """Deterministic batch ``step``: random tokens, loss on the second half, weights 1/B."""
    import torch

    from adnanny_sft.backend import Batch

    g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
    b, t = cfg.batch_size, cfg.seq_len
    ids = torch.randint(0, vocab, (b, t), generator=g)
    loss_mask = torch.zeros(b, t)
    loss_mask[:, t // 2 :] = 1.0
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones(b, t, dtype=torch.long),
        loss_mask=loss_mask,
        sample_weights=torch.full((b,), 1.0 / b),
        task=("synthetic",) * b,
        sample_ids=tuple(f"s{step}-{i}" for i in range(b)),
    )


def stage_layout(cfg: TrainConfig, hf_cfg: dict[str, Any], sizes: Any) -> list[list[str]]:
    """megatron's per-stage layer types from ``stage_layers`` (explicit counts or adnanny-ckpt's plan)."""
    from adnanny_ckpt.errors import AdNannyCkptError
    from adnanny_ckpt.layout import plan_layout

    from adnanny_megatron.layout import layout_from_stage_sizes, megatron_layout
    from adnanny_megatron.provider import arch_spec

    arch = arch_spec(hf_cfg)
    if cfg.stage_layers == "plan":
        try:
            lay = plan_layout(hf_cfg, sizes.pp, sizes.ep, sizes.tp, sizes.dp).layout
        except AdNannyCkptError as exc:
            raise AdNannyMegatronError(f"adnanny-ckpt cannot plan layout {cfg.layout!r}: {exc}") from exc
    else:
        lay = layout_from_stage_sizes(str(cfg.stage_layers), ep=sizes.ep, tp=sizes.tp, dp=sizes.dp,
                                      num_experts=arch.num_experts, num_layers=arch.num_layers)
    if lay.pp != sizes.pp:
        raise AdNannyMegatronError(f"`stage_layers` {cfg.stage_layers!r} has {lay.pp} stages but `layout` "
                                   f"{cfg.layout!r} has pp={sizes.pp}")
    mtp_layers = arch.num_mtp_layers if (cfg.mtp if cfg.mtp is not None else arch.num_mtp_layers > 0) else 0
    return megatron_layout(lay, mtp_layers=mtp_layers)


def _latest(save_dir: Path) -> Path | None:
    marker = save_dir / "latest.txt"
    if not marker.is_file():
        return None
    path = save_dir / marker.read_text().strip()
    return path if (path / "metadata.json").is_file() else None


def _save(backend: Any, save_dir: Path, rank: int) -> None:
    name = f"step_{backend.step:06d}"
    backend.save(save_dir / name)
    if rank == 0:
        tmp = save_dir / "latest.txt.tmp"
        tmp.write_text(name)
        os.replace(tmp, save_dir / "latest.txt")


def main(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Run training; returns the per-step records (identical on every rank)."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from adnanny_megatron import parallel, provider
    from adnanny_megatron.backend import MegatronBackend, TrainSettings
    from adnanny_megatron.optim import OptimSettings

    sizes = parallel.sizes_from_layout(cfg.layout, int(os.environ.get("WORLD_SIZE", "1")))
    parallel.initialize(sizes, seed=cfg.seed, timeout_minutes=cfg.timeout_minutes)
    rank = dist.get_rank()
    hf_cfg = resolve_hf_config(cfg.model)
    bf16 = {"auto": None, "fp32": False, "bf16": True}[cfg.dtype]
    rule = cfg.vocab_divisible_by or (provider.checkpoint_vocab_rule(cfg.init) if cfg.init else None)
    pipeline_layout = stage_layout(cfg, hf_cfg, sizes) if cfg.stage_layers else None
    spec = provider.transformer_config_from_hf(
        hf_cfg, bf16=bf16, tp=sizes.tp, pp=sizes.pp, ep=sizes.ep, pipeline_layout=pipeline_layout, mtp=cfg.mtp,
        num_layers_in_first_pipeline_stage=cfg.first_stage_layers if sizes.pp > 1 else None,
        **({} if rule is None else {"make_vocab_size_divisible_by": rule}),
    )
    backend = MegatronBackend(
        spec,
        OptimSettings(lr=cfg.lr, clip_grad=cfg.clip_grad, moe_optimizer=cfg.moe_optimizer,
                      use_distributed_optimizer=cfg.use_distributed_optimizer),
        TrainSettings(micro_batch_size=cfg.micro_batch_size, warmup_steps=cfg.warmup_steps,
                      total_steps=cfg.steps, lr_schedule=cfg.lr_schedule, mtp_loss_weight=cfg.mtp_loss_weight),
    )
    if cfg.init:
        backend.load_model_weights(cfg.init)
    save_dir = Path(cfg.save_dir) if cfg.save_dir else None
    if save_dir is not None and cfg.resume:
        latest = _latest(save_dir)
        if latest is not None:
            backend.load(latest)
            if rank == 0:
                print(f"resumed from {latest} at step {backend.step}", flush=True)
    records: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.steps, initial=backend.step, disable=rank != 0, desc="train", file=sys.stderr)
    while backend.step < cfg.steps:
        t0 = time.perf_counter()
        batch = synthetic_batch(backend.step, cfg, spec.vocab_size)
        losses = backend.forward_backward(batch)
        if rank == 0:
            print(f"[adnanny-megatron] step {backend.step} forward_backward done", flush=True)
        stats = backend.optimizer_step()
        dt = time.perf_counter() - t0
        tokens = int(batch.attention_mask.sum())
        rec = {
            "step": backend.step, "loss": float((losses * batch.sample_weights).sum()),
            "per_sample": [float(x) for x in losses], "tokens_per_s": tokens / dt, **stats,
        }
        records.append(rec)
        if rank == 0:
            print(f"[adnanny-megatron] step {rec['step']} loss {rec['loss']:.6f} "
                  f"grad_norm {rec['grad_norm']:.4f}", flush=True)
            if cfg.log_json:
                with open(cfg.log_json, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
        bar.update(1)
        if save_dir is not None and cfg.save_every and backend.step % cfg.save_every == 0:
            _save(backend, save_dir, rank)
        if stats.get("skipped"):
            raise AdNannyMegatronError(f"non-finite gradient at step {backend.step}: update skipped, stopping")
    bar.close()
    if save_dir is not None and (not cfg.save_every or backend.step % cfg.save_every):
        _save(backend, save_dir, rank)
    dist.barrier()
    if rank == 0:
        print("[adnanny-megatron] training finished", flush=True)
    parallel.destroy()
    return records
