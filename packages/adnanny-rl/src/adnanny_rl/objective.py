"""The GRPO objective of paper §4.3, written once: advantages, clipped ratio, KL to a reference, aggregation.

Shapes: a rollout step has P prompts and G completions per prompt; completion tokens are padded to T.
Per-token tensors are ``[N, T]`` with N = P·G rows ordered prompt-major (row ``p*G + g`` is completion g of
prompt p) and a ``mask`` of 1 on completion tokens.

What the paper asks and what we pick (every choice is a config field):

* **Group-relative advantage** ``A_{p,g} = r_{p,g} − mean_g r_{p,·}``, optionally divided by the group's std
  (``scale_std``; DeepSeek's GRPO divides, Dr. GRPO argues it biases towards easy/hard groups, so it is a switch).
  A group whose rewards are all equal has zero advantage — counted by `zero_advantage_share`, never a NaN.
* **Clipped importance ratio** ``ρ = exp(logp − logp_old)``, surrogate ``min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A)``
  (PPO's; ε_high > ε_low is DAPO's "clip higher"). With μ = 1 policy update per rollout batch ``logp_old`` equals
  ``logp`` numerically and ρ = 1, but the gradient is still ``A·∇logp`` — the on-policy case.
* **KL penalty** ``β·KL(π_θ ‖ π_ref)`` per token with one of Schulman's estimators (x = logp_ref − logp):
  ``k1 = −x`` (unbiased, can be negative, high variance), ``k2 = x²/2`` (biased, low variance; its gradient is
  that of the reverse KL), ``k3 = eˣ − x − 1`` (unbiased, always ≥ 0, low variance). The default is ``k3``, as in
  DeepSeekMath's GRPO and TRL: non-negative per token, so a logged KL never looks negative.
* **Aggregation** over tokens: ``seq-mean-token-mean`` (mean over each completion's tokens, then over
  completions — DeepSeek GRPO), ``token-mean`` (over all completion tokens of the batch — DAPO; long completions
  weigh more), ``token-sum-norm`` (sum over tokens divided by a fixed normaliser, e.g. N·max_completion_tokens —
  Dr. GRPO; no length bias at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from adnanny_rl.errors import RLConfigError

__all__ = ["AGGREGATIONS", "KL_ESTIMATORS", "GRPOLossOutput", "aggregate", "aggregation_weights", "group_advantages",
           "grpo_loss", "kl_per_token", "zero_advantage_share"]

KLEstimator = Literal["k1", "k2", "k3"]
Aggregation = Literal["seq-mean-token-mean", "token-mean", "token-sum-norm"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
AGGREGATIONS: tuple[str, ...] = ("seq-mean-token-mean", "token-mean", "token-sum-norm")


def group_advantages(rewards: torch.Tensor, *, scale_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """``[P, G]`` rewards -> ``[P, G]`` group-relative advantages (mean-centred; divided by std when asked).

    The std is the population std of the group (``unbiased=False``) so that G = 2 is well defined; groups with
    equal rewards get exactly zero (their std is 0 and the centred reward is 0, so ``eps`` only avoids 0/0).
    """
    if rewards.dim() != 2:
        raise RLConfigError(f"`rewards` must be [prompts, group], got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float32)
    centred = r - r.mean(dim=1, keepdim=True)                        # [P, G]
    if not scale_std:
        return centred
    std = r.std(dim=1, keepdim=True, unbiased=False)                 # [P, 1]
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


def zero_advantage_share(rewards: torch.Tensor) -> float:
    """The share of groups (rows of ``[P, G]``) whose rewards are all equal, i.e. that teach nothing."""
    if rewards.numel() == 0:
        return 0.0
    flat = (rewards == rewards[:, :1]).all(dim=1)
    return float(flat.float().mean())


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from log-probabilities of the sampled tokens (see module doc)."""
    x = ref_logp - logp
    if estimator == "k1":
        return -x
    if estimator == "k2":
        return 0.5 * x * x
    if estimator == "k3":
        return torch.exp(x) - x - 1.0
    raise RLConfigError(f"`kl_estimator` must be one of {list(KL_ESTIMATORS)}, got {estimator!r}")


def aggregation_weights(mask: torch.Tensor, mode: str = "seq-mean-token-mean", *,
                        normalizer: float | None = None) -> torch.Tensor:
    """``[N, T]`` token weights with ``aggregate(v) = Σ v·w``, computed over the WHOLE rollout batch.

    Computing them once and slicing rows per micro-batch makes gradient accumulation exact: the sum of the
    micro-batches' losses equals the loss of the full batch for every aggregation (a per-micro-batch mean
    would weigh a short micro-batch's tokens more).
    """
    m = mask.to(torch.float32)
    if mode == "seq-mean-token-mean":
        return m / m.sum(dim=1, keepdim=True).clamp(min=1.0) / max(m.shape[0], 1)
    if mode == "token-mean":
        return m / m.sum().clamp(min=1.0)
    if mode == "token-sum-norm":
        if normalizer is None or normalizer <= 0:
            raise RLConfigError(f"`loss_aggregation` 'token-sum-norm' needs a positive `normalizer`, got "
                                f"{normalizer!r}")
        return m / normalizer
    raise RLConfigError(f"`loss_aggregation` must be one of {list(AGGREGATIONS)}, got {mode!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "seq-mean-token-mean", *,
              normalizer: float | None = None) -> torch.Tensor:
    """Reduce ``[N, T]`` per-token values over the completion tokens in ``mask`` to a scalar (see module doc)."""
    w = aggregation_weights(mask, mode, normalizer=normalizer).to(per_token.dtype)
    return (per_token * w).sum()


@dataclass(frozen=True)
class GRPOLossOutput:
    """The scalar loss to backpropagate and detached statistics for the logs."""

    loss: torch.Tensor
    policy_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.04, clip_low: float = 0.2,
              clip_high: float = 0.2, kl_estimator: str = "k3", aggregation: str = "seq-mean-token-mean",
              normalizer: float | None = None, token_weights: torch.Tensor | None = None) -> GRPOLossOutput:
    """The GRPO loss to *minimise*: ``−agg(min(ρA, clip(ρ)A) − β·KL)``.

    ``logp`` ``[N, T]`` carries the gradient (current parameters); ``old_logp`` (the policy that sampled, μ > 1
    makes it stale) and ``ref_logp`` (frozen reference; None when β = 0) are treated as constants.
    ``advantages`` is ``[N]`` (one per completion, broadcast over its tokens) or ``[N, T]``.
    ``token_weights`` (from `aggregation_weights` over the whole rollout batch, sliced to these rows) replaces
    the aggregation computed from ``mask`` alone, so micro-batches add up exactly.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise RLConfigError(f"`logp` {tuple(logp.shape)}, `old_logp` {tuple(old_logp.shape)} and `mask` "
                            f"{tuple(mask.shape)} must have one shape")
    if beta < 0 or clip_low < 0 or clip_high < 0:
        raise RLConfigError(f"`beta`, `clip_low`, `clip_high` must be >= 0, got {beta}, {clip_low}, {clip_high}")
    w = (token_weights if token_weights is not None
         else aggregation_weights(mask, aggregation, normalizer=normalizer)).to(logp.dtype)
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv[:, None]                                           # [N, 1] -> broadcast over T
    ratio = torch.exp(logp - old_logp.detach())                      # [N, T]
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    surrogate = torch.minimum(ratio * adv, clipped * adv)            # [N, T]
    per_token = -surrogate
    kl_value = 0.0
    if beta > 0:
        if ref_logp is None:
            raise RLConfigError("`beta` > 0 needs reference log-probabilities (`ref_logp`)")
        kl_tok = kl_per_token(logp, ref_logp.detach(), kl_estimator)
        per_token = per_token + beta * kl_tok
        kl_value = float((kl_tok.detach() * w).sum())
    elif ref_logp is not None:
        kl_value = float((kl_per_token(logp.detach(), ref_logp, kl_estimator) * w).sum())
    loss = (per_token * w).sum()
    m = mask.to(torch.bool)
    with torch.no_grad():
        is_clipped = ((ratio < 1.0 - clip_low) & (adv < 0)) | ((ratio > 1.0 + clip_high) & (adv > 0))
        n_tok = max(int(m.sum()), 1)
        clip_fraction = float((is_clipped & m).sum()) / n_tok
        ratio_mean = float((ratio * m).sum()) / n_tok
        policy = float((-surrogate.detach() * w).sum())
    return GRPOLossOutput(loss=loss, policy_loss=policy, kl=kl_value, clip_fraction=clip_fraction,
                          ratio_mean=ratio_mean)
