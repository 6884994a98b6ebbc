"""Eq. (8): a batch reward from a frozen downstream model, ``R_t(B_t) = g_t(M_with − M_base)``.

The paper assigns ``R_t(B_t)`` to every sample of the batch ``B_t``. GRPO's advantage is group-relative: a reward
that is constant across one prompt's G completions gives all of them advantage 0, so a batch must never be "the
G completions of one prompt". We form the reward batches *across* prompts — batch j holds completion j of every
prompt in the step — so the G completions of a prompt fall in G different batches, receive G (generally
different) batch rewards, and get non-zero group-relative advantages whenever the batches' metrics differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from adnanny_rl.errors import RewardError, RLConfigError

__all__ = ["RewardTransform", "batch_rewards", "reward_batches"]


@dataclass(frozen=True)
class RewardTransform:
    """``g_t`` of eq. (8): ``identity``, ``scale`` (× `scale`), ``clip`` (to [`low`, `high`]) or ``sign``."""

    kind: Literal["identity", "scale", "clip", "sign"] = "identity"
    scale: float = 1.0
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("identity", "scale", "clip", "sign"):
            raise RLConfigError(f"`transform` must be identity, scale, clip or sign, got {self.kind!r}")
        if self.kind == "clip" and not self.low <= self.high:
            raise RLConfigError(f"`low` must be <= `high` for a clip transform, got {self.low} > {self.high}")

    def __call__(self, delta: float) -> float:
        if self.kind == "scale":
            return self.scale * delta
        if self.kind == "clip":
            return min(max(delta, self.low), self.high)
        if self.kind == "sign":
            return float((delta > 0) - (delta < 0))
        return delta


def reward_batches(num_prompts: int, group_size: int) -> list[list[int]]:
    """Row indices (prompt-major, row = p·G + g) of each reward batch: batch j = completion j of every prompt."""
    if num_prompts < 1 or group_size < 1:
        raise RLConfigError(f"`num_prompts` and `group_size` must be >= 1, got {num_prompts}, {group_size}")
    return [[p * group_size + j for p in range(num_prompts)] for j in range(group_size)]


def batch_rewards(outputs: Sequence[Any], num_prompts: int, group_size: int,
                  metric_gain: Callable[[list[Any]], tuple[float, float]], transform: RewardTransform,
                  *, task: str = "task") -> list[float]:
    """Per-row rewards: for each batch j, ``(M_with, M_base) = metric_gain(outputs of batch j)`` and every row of
    the batch gets ``g(M_with − M_base)``. `metric_gain` runs the frozen downstream pipeline (retrieval with and
    without the generated queries, CTR of rewrite vs original...)."""
    if len(outputs) != num_prompts * group_size:
        raise RLConfigError(f"{len(outputs)} outputs for {num_prompts} prompts x {group_size} completions")
    rewards = [0.0] * len(outputs)
    for j, rows in enumerate(reward_batches(num_prompts, group_size)):
        try:
            with_, base = metric_gain([outputs[i] for i in rows])
        except Exception as e:  # noqa: BLE001 - re-raised with the task and batch named
            raise RewardError(f"task `{task}`: the batch reward failed on batch {j} (rows {rows[:4]}...): "
                              f"{type(e).__name__}: {e}") from e
        r = transform(float(with_) - float(base))
        if not math.isfinite(r):
            raise RewardError(f"task `{task}`: batch {j} reward is {r!r} (M_with={with_!r}, M_base={base!r})")
        for i in rows:
            rewards[i] = r
    return rewards
