"""The SFT objective, paper eq. (1)–(2), as tensors — the reference every backend matches.

Eq. (1): ℓ_{t,i} = −Σ_k log p_θ(y_k | x, y_<k), summed over the K target tokens only (prompt, chat-template
scaffolding and padding carry no loss). Eq. (2): L = Σ_t λ_t E_{i∼D_t}[w_{t,i} ℓ_{t,i}].

How a mini-batch estimates eq. (2) here (and where we deviate in scale only):

* Per-sample loss is the *sum* over target tokens, as eq. (1) says (``loss_mask`` selects them).
* The optimizer step's gradient is ∇ Σ_b s_b ℓ_b with ``s_b = w_b · c_b / N_tok``, where ``N_tok`` is the
  number of target tokens in the whole optimizer step (all micro-batches) and ``c_b`` the task factor of the
  chosen application mode (1 under weighted task *sampling*, where λ_t enters through the sampler;
  λ_t/p_t under *loss weighting*, see ``adnanny_sft.weighting``). Dividing by ``N_tok`` rather than by the
  number of samples N multiplies eq. (2) by the per-step constant N/N_tok: the relative weight of every
  sample is exactly the paper's, while the learning-rate scale matches the usual token-mean SFT loss (and
  TRL's, which the speed benchmark compares against). With w ≡ 1, c ≡ 1 it *is* the token-mean loss of the
  step, independent of how the step is split into micro-batches (a test pins that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from adnanny_sft.backend import Batch

__all__ = ["token_nll", "per_sample_loss", "per_sample_mean_nll"]


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood aligned with ``input_ids``: out[b, t] = −log p(x_t | x_<t).

    logits: [B, T, V] (any float dtype; computed in float32), input_ids: [B, T] -> [B, T] float32 with
    out[:, 0] = 0 (the first token is never predicted).
    """
    import torch
    import torch.nn.functional as F

    b, t, v = logits.shape
    shifted = logits[:, :-1, :].float()  # [B, T-1, V]: logits at t-1 predict token t
    targets = input_ids[:, 1:]  # [B, T-1]
    nll = F.cross_entropy(shifted.reshape(-1, v), targets.reshape(-1), reduction="none").view(b, t - 1)
    return torch.cat([nll.new_zeros(b, 1), nll], dim=1)  # [B, T]


def per_sample_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Eq. (1): ℓ_b = Σ_t loss_mask[b, t] · nll[b, t], shape [B] (float32, keeps the graph)."""
    nll = token_nll(logits, batch.input_ids)  # [B, T]
    mask = batch.loss_mask.to(nll.dtype).clone()
    mask[:, 0] = 0.0  # position 0 has no prediction
    return (nll * mask).sum(dim=1)


def per_sample_mean_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Exponent of eq. (3): Σ_t m_bt·nll_bt / Σ_t m_bt, shape [B]; NaN where a sample has no target token."""
    import torch

    nll = token_nll(logits, batch.input_ids)
    mask = batch.loss_mask.to(nll.dtype).clone()
    mask[:, 0] = 0.0
    denom = mask.sum(dim=1)
    total = (nll * mask).sum(dim=1)
    return torch.where(denom > 0, total / denom.clamp_min(1e-12), torch.full_like(total, float("nan")))
