"""GRPO's pieces against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from adnanny_rl.errors import RLConfigError
from adnanny_rl.objective import aggregate, group_advantages, grpo_loss, kl_per_token, zero_advantage_share


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 1.0, 2.0, 2.0]])
    a = group_advantages(r, scale_std=False)
    assert torch.allclose(a, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [1.0, -1.0, 0.0, 0.0]]))
    s = group_advantages(r, scale_std=True, eps=0.0)
    std3 = math.sqrt((1 + 1 + 0 + 0) / 4)
    assert torch.allclose(s, torch.tensor([[1.0, -1.0, -1.0, 1.0], [0, 0, 0, 0],
                                           [1 / std3, -1 / std3, 0.0, 0.0]]))
    assert not torch.isnan(s).any()
    assert zero_advantage_share(r) == pytest.approx(1 / 3)


def test_kl_estimators_by_hand() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    x = ref - logp                                                   # [-0.5, 1.0, 0.0]
    assert torch.allclose(kl_per_token(logp, ref, "k1"), torch.tensor([0.5, -1.0, 0.0]))
    assert torch.allclose(kl_per_token(logp, ref, "k2"), torch.tensor([0.125, 0.5, 0.0]))
    assert torch.allclose(kl_per_token(logp, ref, "k3"), torch.exp(x) - x - 1)
    assert (kl_per_token(logp, ref, "k3") >= 0).all()
    with pytest.raises(RLConfigError, match="`kl_estimator`"):
        kl_per_token(logp, ref, "k4")


def test_k3_and_k1_are_unbiased_for_the_true_kl() -> None:
    # Sample from p; E_p[k1] = E_p[k3] = KL(p || q) for categorical p, q.
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[idx], q.log()[idx]
    true = float((p * (p / q).log()).sum())
    assert float(kl_per_token(logp, logq, "k1").mean()) == pytest.approx(true, abs=0.01)
    assert float(kl_per_token(logp, logq, "k3").mean()) == pytest.approx(true, abs=0.01)


def test_aggregations_by_hand() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(aggregate(v, m, "seq-mean-token-mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate(v, m, "token-mean")) == pytest.approx(10.0 / 4)
    assert float(aggregate(v, m, "token-sum-norm", normalizer=6.0)) == pytest.approx(10.0 / 6)
    with pytest.raises(RLConfigError, match="normalizer"):
        aggregate(v, m, "token-sum-norm")
    with pytest.raises(RLConfigError, match="`loss_aggregation`"):
        aggregate(v, m, "mean")


def test_on_policy_gradient_is_minus_advantage_over_length() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv = torch.tensor([2.0, -1.0])
    out = grpo_loss(logp, logp.detach(), None, adv, mask, beta=0.0)
    out.loss.backward()
    # seq-mean-token-mean: d loss / d logp_{i,t} = -A_i / (|o_i| * N) on completion tokens.
    want = torch.tensor([[-2 / 3 / 2] * 3, [1 / 2 / 2, 1 / 2 / 2, 0.0]])
    assert torch.allclose(logp.grad, want)
    assert out.clip_fraction == 0.0 and out.ratio_mean == pytest.approx(1.0)


def test_clipping_stops_the_gradient_and_is_counted() -> None:
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)   # ratios 1.5 and 1.1
    out = grpo_loss(logp, old, None, torch.tensor([1.0]), torch.ones(1, 2), beta=0.0, clip_low=0.2,
                    clip_high=0.2, aggregation="token-mean")
    out.loss.backward()
    assert logp.grad[0, 0] == 0.0                                     # clipped at 1.2: no gradient
    assert float(logp.grad[0, 1]) == pytest.approx(-1.1 / 2)          # d(-ρA)/dlogp = -ρA / n_tokens
    assert out.clip_fraction == pytest.approx(0.5)
    assert out.policy_loss == pytest.approx(-(1.2 + 1.1) / 2)
    # A negative advantage is clipped on the low side only.
    logp2 = torch.tensor([[math.log(0.5)]], requires_grad=True)
    o2 = grpo_loss(logp2, torch.zeros(1, 1), None, torch.tensor([-1.0]), torch.ones(1, 1), beta=0.0)
    o2.loss.backward()
    assert logp2.grad[0, 0] == 0.0 and o2.clip_fraction == 1.0


def test_kl_term_adds_beta_times_the_estimator() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2)
    out = grpo_loss(logp, logp.detach(), ref, torch.tensor([0.0]), mask, beta=0.1, kl_estimator="k2",
                    aggregation="token-mean")
    assert float(out.loss.detach()) == pytest.approx(0.1 * (0.125 + 0.5) / 2)
    assert out.kl == pytest.approx((0.125 + 0.5) / 2)
    with pytest.raises(RLConfigError, match="reference"):
        grpo_loss(logp, logp.detach(), None, torch.tensor([0.0]), mask, beta=0.1)


def test_micro_batches_add_up_to_the_full_batch() -> None:
    from adnanny_rl.objective import aggregation_weights

    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(6, 5, generator=g)).requires_grad_(True)
    old = logp.detach() + 0.05 * torch.randn(6, 5, generator=g)
    ref = logp.detach() - 0.1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                         [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    adv = torch.randn(6, generator=g)
    for mode in ("seq-mean-token-mean", "token-mean", "token-sum-norm"):
        kw = {"aggregation": mode, "normalizer": 30.0, "beta": 0.1}
        full = grpo_loss(logp, old, ref, adv, mask, **kw).loss
        w = aggregation_weights(mask, mode, normalizer=30.0)
        parts = sum(grpo_loss(logp[i:i + 2], old[i:i + 2], ref[i:i + 2], adv[i:i + 2], mask[i:i + 2],
                              token_weights=w[i:i + 2], **kw).loss for i in (0, 2, 4))
        assert float(parts.detach()) == pytest.approx(float(full.detach()), rel=1e-6), mode
