"""Eq. (1)-(2): loss on target tokens only, summed per sample; hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adnanny_sft.backend import Batch
from adnanny_sft.errors import DataError
from adnanny_sft.objective import per_sample_loss, per_sample_mean_nll, token_nll


def _logsoftmax(row: list[float], k: int) -> float:
    return row[k] - math.log(sum(math.exp(v) for v in row))


def _case() -> tuple[torch.Tensor, Batch]:
    # V = 3; logits[b, t] predicts token t+1.
    logits = torch.tensor([
        [[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]],
        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]],
    ])
    ids = torch.tensor([[0, 2, 0, 1], [1, 1, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    batch = Batch(ids, attn, mask, torch.tensor([1.0, 0.5]), ("a", "b"), ("x", "y"))
    return logits, batch


def test_token_nll_is_shifted_cross_entropy() -> None:
    logits, batch = _case()
    nll = token_nll(logits, batch.input_ids)
    assert nll[0, 0] == 0.0 and nll[1, 0] == 0.0
    # token 2 of sample 0 (id 0) is predicted by logits[0, 1] = [2, 0, 0]
    assert nll[0, 2].item() == pytest.approx(-_logsoftmax([2.0, 0.0, 0.0], 0), abs=1e-6)


def test_eq1_sums_target_tokens_only() -> None:
    logits, batch = _case()
    expected0 = -_logsoftmax([2.0, 0.0, 0.0], 0) - _logsoftmax([0.0, 0.0, 3.0], 1)
    expected1 = -_logsoftmax([1.0, 0.0, 0.0], 1) - _logsoftmax([0.0, 2.0, 0.0], 0)
    got = per_sample_loss(logits, batch)
    assert got.tolist() == pytest.approx([expected0, expected1], abs=1e-6)
    # prompt tokens / padding: changing their *targets* (not context) leaves the loss unchanged
    other = Batch(batch.input_ids.clone(), batch.attention_mask, batch.loss_mask, batch.sample_weights)
    other.input_ids[0, 1] = 1  # a prompt token of sample 0; its own prediction has mask 0
    logits2 = logits.clone()
    assert per_sample_loss(logits2, other)[1] == got[1]


def test_eq3_mean_and_nan_without_targets() -> None:
    logits, batch = _case()
    mean = per_sample_mean_nll(logits, batch)
    assert mean.tolist() == pytest.approx((per_sample_loss(logits, batch) / 2).tolist(), abs=1e-6)
    batch.loss_mask[1] = 0.0
    assert math.isnan(float(per_sample_mean_nll(logits, batch)[1]))


def test_mask_at_position_zero_is_ignored() -> None:
    logits, batch = _case()
    before = per_sample_loss(logits, batch)
    batch.loss_mask[:, 0] = 1.0
    assert torch.equal(per_sample_loss(logits, batch), before)


def test_fractional_token_weights() -> None:
    logits, batch = _case()
    batch.loss_mask[0, 3] = 0.25
    expected0 = -_logsoftmax([2.0, 0.0, 0.0], 0) - 0.25 * _logsoftmax([0.0, 0.0, 3.0], 1)
    assert per_sample_loss(logits, batch)[0].item() == pytest.approx(expected0, abs=1e-6)


def test_batch_validation_names_the_field() -> None:
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(DataError, match="`loss_mask` must have the shape"):
        Batch(ids, torch.ones(2, 4), torch.ones(2, 3), torch.ones(2))
    with pytest.raises(DataError, match="`sample_weights` must be"):
        Batch(ids, torch.ones(2, 4), torch.ones(2, 4), torch.ones(3))
    with pytest.raises(DataError, match="`input_ids` must be int64"):
        Batch(ids.float(), torch.ones(2, 4), torch.ones(2, 4), torch.ones(2))
    with pytest.raises(DataError, match="`loss_mask` must be a float"):
        Batch(ids, torch.ones(2, 4), torch.ones(2, 4, dtype=torch.long), torch.ones(2))
    with pytest.raises(DataError, match="`task` must list one entry per sample"):
        Batch(ids, torch.ones(2, 4), torch.ones(2, 4), torch.ones(2), task=("a",))
