"""Training-behaviour check (paper §4.1.4): Megatron trainer vs a plain HF/torch loop, step by step.

Same HF checkpoint, same batches (adnanny-megatron's deterministic synthetic batches), same objective
(Σ_b w_b ℓ_b, eq. 1–2), same AdamW hyper-parameters and the same global-norm clipping rule
(``coef = max_norm / (norm + 1e-6)`` applied when < 1). In fp32 the per-step losses must agree to
``rtol`` (default 1e-4, relative). The reference loop is deliberately plain torch — ``model(...)``,
``loss.backward()``, ``clip``, ``AdamW.step()`` — so it shares no code with the Megatron path but the
HF weights.

The paper's own check (Mistral on an internal task, AUC 96.92 vs 96.90) cannot be reproduced here; this
is the same idea at unit-test scale.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BehaviourReport", "hf_reference_losses", "megatron_losses", "run_behaviour_check"]


@dataclass
class BehaviourReport:
    hf: list[float] = field(default_factory=list)
    megatron: list[float] = field(default_factory=list)
    rtol: float = 1e-4

    @property
    def rel_diffs(self) -> list[float]:
        return [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(self.hf, self.megatron, strict=True)]

    @property
    def passed(self) -> bool:
        return bool(self.hf) and len(self.hf) == len(self.megatron) and max(self.rel_diffs) <= self.rtol

    def to_dict(self) -> dict[str, Any]:
        return {"hf": self.hf, "megatron": self.megatron, "rel_diffs": self.rel_diffs, "rtol": self.rtol,
                "passed": self.passed}


def _batches(steps: int, batch_size: int, seq_len: int, seed: int, vocab: int) -> list[Any]:
    from adnanny_megatron.train import TrainConfig, synthetic_batch

    cfg = TrainConfig(batch_size=batch_size, seq_len=seq_len, seed=seed)
    return [synthetic_batch(i, cfg, vocab) for i in range(steps)]


def hf_reference_losses(hf_dir: str | Path, batches: list[Any], *, lr: float, clip: float,
                        betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                        timings: list[float] | None = None) -> list[float]:
    """The plain transformers + torch.optim.AdamW loop; returns Σ_b w_b ℓ_b per step.

    ``timings`` (if given) receives each step's wall time in seconds (used by the CPU benchmark)."""
    import time

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    losses = []
    for b in batches:
        t0 = time.perf_counter()
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float()  # [B,T,V]
        ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), b.input_ids[:, 1:], reduction="none")  # [B,T-1]
        per_sample = (ce * b.loss_mask[:, 1:]).sum(dim=1)  # eq. 1
        loss = (per_sample * b.sample_weights).sum()  # eq. 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params
                                                     if p.grad is not None]))
        coef = clip / (float(norm) + 1e-6)
        if clip > 0 and coef < 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
        opt.step()
        losses.append(float(loss))
        if timings is not None:
            timings.append(time.perf_counter() - t0)
    return losses


def megatron_losses(hf_dir: str | Path, ckpt_dir: str | Path, batches: list[Any], *, lr: float,
                    clip: float, timings: list[float] | None = None) -> list[float]:
    """The Megatron backend (1 process, fp32) on the converted checkpoint; Σ_b w_b ℓ_b per step."""
    import time

    from adnanny_megatron import parallel, provider
    from adnanny_megatron.backend import MegatronBackend, TrainSettings
    from adnanny_megatron.optim import OptimSettings

    parallel.initialize(parallel.Sizes())
    try:
        rule = provider.checkpoint_vocab_rule(ckpt_dir)
        spec = provider.transformer_config_from_hf(
            hf_dir, bf16=False, **({} if rule is None else {"make_vocab_size_divisible_by": rule}))
        be = MegatronBackend(spec, OptimSettings(lr=lr, clip_grad=clip), TrainSettings())
        be.load_model_weights(ckpt_dir)
        out = []
        for b in batches:
            t0 = time.perf_counter()
            per_sample = be.forward_backward(b)
            be.optimizer_step()
            out.append(float((per_sample * b.sample_weights).sum()))
            if timings is not None:
                timings.append(time.perf_counter() - t0)
        return out
    finally:
        parallel.destroy()


def run_behaviour_check(hf_dir: str | Path, *, steps: int = 5, batch_size: int = 2, seq_len: int = 16,
                        lr: float = 1e-3, clip: float = 1.0, seed: int = 0, rtol: float = 1e-4,
                        workdir: str | Path | None = None) -> BehaviourReport:
    """Convert ``hf_dir`` with adnanny-ckpt, run both loops, compare per-step losses."""
    from adnanny_megatron import parallel
    from adnanny_megatron.parity import convert_for_megatron
    from adnanny_megatron.provider import load_hf_config

    vocab = int(load_hf_config(hf_dir)["vocab_size"])
    batches = _batches(steps, batch_size, seq_len, seed, vocab)
    ctx = tempfile.TemporaryDirectory(prefix="adnanny-behaviour-") if workdir is None else None
    base = Path(ctx.name if ctx else workdir)  # type: ignore[arg-type]
    try:
        ckpt = convert_for_megatron(hf_dir, base / "mcore-tp1", parallel.Sizes())
        mg = megatron_losses(hf_dir, ckpt, batches, lr=lr, clip=clip)
        hf = hf_reference_losses(hf_dir, batches, lr=lr, clip=clip)
        return BehaviourReport(hf=hf, megatron=mg, rtol=rtol)
    finally:
        if ctx is not None:
            ctx.cleanup()
