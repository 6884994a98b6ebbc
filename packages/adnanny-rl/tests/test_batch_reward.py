"""Eq. (8) batching: batch j = completion j of every prompt, so group advantages are non-zero."""

from __future__ import annotations

import pytest
import torch

from adnanny_rl.batch_reward import RewardTransform, batch_rewards, reward_batches
from adnanny_rl.errors import RewardError, RLConfigError
from adnanny_rl.objective import group_advantages


def test_reward_batches_cross_prompts() -> None:
    assert reward_batches(3, 2) == [[0, 2, 4], [1, 3, 5]]


def test_batch_rewards_and_advantages_by_hand() -> None:
    # 3 prompts x 2 completions; the "downstream metric" of a batch is the mean of its outputs, base 0.5.
    outputs = [1.0, 0.0, 0.5, 0.5, 1.0, 0.0]
    r = batch_rewards(outputs, 3, 2, lambda b: (sum(b) / len(b), 0.5), RewardTransform("identity"))
    b0 = (1.0 + 0.5 + 1.0) / 3 - 0.5                                  # completion 0 of every prompt
    b1 = (0.0 + 0.5 + 0.0) / 3 - 0.5
    assert r == pytest.approx([b0, b1, b0, b1, b0, b1])
    adv = group_advantages(torch.tensor(r).view(3, 2), scale_std=False)
    d = (b0 - b1) / 2
    assert torch.allclose(adv, torch.tensor([[d, -d]] * 3))
    assert (adv != 0).all()


def test_a_group_batch_would_teach_nothing() -> None:
    # The contrast the docs state: if a batch were one prompt's group, every completion shares one reward.
    r = torch.tensor([[0.3, 0.3], [0.7, 0.7]])
    assert (group_advantages(r) == 0).all()


def test_transforms() -> None:
    assert RewardTransform("scale", scale=10)(0.02) == pytest.approx(0.2)
    assert RewardTransform("clip", low=-0.1, high=0.1)(0.5) == 0.1
    assert RewardTransform("sign")(-0.3) == -1.0 and RewardTransform("sign")(0.0) == 0.0
    with pytest.raises(RLConfigError, match="`transform`"):
        RewardTransform("log")


def test_a_failing_metric_names_the_task_and_batch() -> None:
    def boom(_b: list[float]) -> tuple[float, float]:
        raise ValueError("retriever index missing")

    with pytest.raises(RewardError, match=r"task `keyword_query`.*batch 0.*retriever index missing"):
        batch_rewards([0.0, 1.0], 1, 2, boom, RewardTransform(), task="keyword_query")
    with pytest.raises(RewardError, match="nan"):
        batch_rewards([0.0, 1.0], 1, 2, lambda b: (float("nan"), 0.0), RewardTransform())
