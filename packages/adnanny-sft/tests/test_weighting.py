"""Eq. (3)-(7) against hand-computed values: perplexity, progress, clipping, normalisation, λ."""

from __future__ import annotations

import math

import pytest

from adnanny_sft.errors import ConfigError, DataError
from adnanny_sft.weighting import (
    InstanceWeighter,
    TaskWeighter,
    instance_weight,
    perplexity,
    progress,
    task_weights,
)


def test_eq3_perplexity() -> None:
    assert perplexity(math.log(2.0)) == pytest.approx(2.0)
    assert perplexity(0.0) == 1.0
    assert perplexity(1e6) == math.inf
    assert math.isnan(perplexity(float("nan")))


def test_eq4_progress_sign() -> None:
    assert progress(5.0, 3.0) == 2.0  # perplexity dropped: positive progress
    assert progress(3.0, 4.5) == -1.5


@pytest.mark.parametrize(
    ("delta", "beta", "expected"),
    [
        (math.log(2.0), 1.0, 0.5),  # exp(-ln 2) = 0.5, inside [0.25, 4]
        (-math.log(3.0), 1.0, 3.0),  # exp(ln 3) = 3
        (math.log(2.0), 2.0, 0.25),  # β doubles the exponent: exactly w_min
        (10.0, 1.0, 0.25),  # clipped at w_min
        (-10.0, 1.0, 4.0),  # clipped at w_max
        (-1e9, 1.0, 4.0),  # no overflow
        (0.0, 1.0, 1.0),
    ],
)
def test_eq5_clipped_weight(delta: float, beta: float, expected: float) -> None:
    assert instance_weight(delta, beta=beta, w_min=0.25, w_max=4.0) == pytest.approx(expected)


def test_eq5_nan_delta_is_neutral() -> None:
    assert instance_weight(float("nan"), beta=1.0, w_min=0.5, w_max=2.0) == 1.0


def test_eq7_normalisation_and_alpha() -> None:
    lam = task_weights({"a": 0.9, "b": 0.6}, alpha=1.0)  # d = 0.1, 0.4
    assert lam == pytest.approx({"a": 0.2, "b": 0.8})
    lam2 = task_weights({"a": 0.9, "b": 0.6}, alpha=2.0)  # d^2 = 0.01, 0.16
    assert lam2 == pytest.approx({"a": 0.01 / 0.17, "b": 0.16 / 0.17})
    assert sum(lam2.values()) == pytest.approx(1.0)
    assert task_weights({"a": 1.0, "b": 1.0}, alpha=1.0) == {"a": 0.5, "b": 0.5}  # all perfect: uniform
    assert task_weights({"a": 1.0, "b": 0.5}, alpha=3.0) == {"a": 0.0, "b": 1.0}


def test_eq7_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="`task_alpha` must be >= 1"):
        task_weights({"a": 0.5}, alpha=0.5)
    with pytest.raises(DataError, match="task `a` must be a fraction in \\[0, 1\\]; got 1.5"):
        task_weights({"a": 1.5}, alpha=1.0)
    with pytest.raises(DataError, match="got 73"):
        task_weights({"a": 73}, alpha=1.0)  # a percent instead of a fraction


def test_instance_weighter_minibatch_visits() -> None:
    w = InstanceWeighter({"i": "t", "j": "t", "k": "t", "u": "u"}, beta=1.0, w_min=0.25, w_max=4.0,
                         normalize=False)
    w.observe(["i", "j"], [math.log(8.0), math.log(2.0)])  # first visit: ppl 8, 2 — no Δ yet
    assert w.raw("i") == 1.0 and w.loss_weight("i") == 1.0
    w.observe(["i", "j"], [math.log(8.0 - math.log(2.0)), math.log(2.0 + math.log(3.0))])
    # Δ_i = ln 2 -> 0.5; Δ_j = -ln 3 -> 3
    assert w.raw("i") == pytest.approx(0.5)
    assert w.raw("j") == pytest.approx(3.0)
    assert w.raw("k") == 1.0
    assert w.last_ppl["i"] == pytest.approx(8.0 - math.log(2.0))
    # NaN (no target token) leaves the weight and the last perplexity alone
    w.observe(["i"], [float("nan")])
    assert w.raw("i") == pytest.approx(0.5)


def test_instance_weighter_per_task_normalisation() -> None:
    w = InstanceWeighter({"i": "t", "j": "t", "k": "t", "u": "u"}, beta=1.0, w_min=0.25, w_max=4.0)
    w.weights.update({"i": 0.5, "j": 3.0})
    w._recompute_sums()
    # task t mean = (0.5 + 3 + 1) / 3 = 1.5 -> loss weights 1/3, 2, 2/3; task u untouched
    assert w.loss_weight("i") == pytest.approx(1.0 / 3.0)
    assert w.loss_weight("j") == pytest.approx(2.0)
    assert w.loss_weight("k") == pytest.approx(2.0 / 3.0)
    assert w.loss_weight("u") == 1.0
    stats = w.per_task_stats()
    assert stats["t"]["mean"] == pytest.approx(1.5) and stats["t"]["max"] == 3.0 and stats["t"]["min"] == 0.5


def test_instance_weighter_epoch_estimator_ignores_visits() -> None:
    w = InstanceWeighter({"i": "t"}, estimator="epoch", normalize=False, w_min=0.1, w_max=10.0)
    w.observe(["i"], [1.0])
    w.observe(["i"], [5.0])
    assert w.raw("i") == 1.0 and not w.last_ppl
    w.end_of_epoch(["i"], [math.log(4.0)])  # θ^(0)
    w.end_of_epoch(["i"], [math.log(3.0)])  # θ^(1): Δ = 1 -> e^-1
    assert w.raw("i") == pytest.approx(math.exp(-1.0))


def test_instance_weighter_state_round_trip_and_disabled() -> None:
    w = InstanceWeighter({"i": "t", "j": "t"}, w_min=0.1, w_max=10.0)
    w.observe(["i", "j"], [1.0, 1.0])
    w.observe(["i", "j"], [0.5, 1.5])
    v = InstanceWeighter({"i": "t", "j": "t"}, w_min=0.1, w_max=10.0)
    v.load_state_dict(w.state_dict())
    assert v.loss_weight("i") == w.loss_weight("i") and v.loss_weight("j") == w.loss_weight("j")
    with pytest.raises(DataError, match="absent from the training set"):
        InstanceWeighter({"x": "t"}).load_state_dict(w.state_dict())
    off = InstanceWeighter({"i": "t"}, enabled=False)
    off.observe(["i"], [1.0])
    off.observe(["i"], [3.0])
    assert off.loss_weight("i") == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"beta": 0.0}, "`instance_beta` must be > 0"), ({"w_min": 1.5}, "w_min <= 1 <= w_max"),
     ({"estimator": "exact"}, "`instance_estimator`")],
)
def test_instance_weighter_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        InstanceWeighter({"i": "t"}, **kwargs)


def test_task_weighter_modes() -> None:
    tw = TaskWeighter({"big": 90, "rare": 10}, alpha=1.0, mode="loss")
    assert tw.lambdas == pytest.approx({"big": 0.9, "rare": 0.1})  # natural start
    assert tw.loss_factor("rare") == pytest.approx(1.0)
    tw.update({"big": 0.9, "rare": 0.6}, step=5)  # λ = 0.2 / 0.8
    assert tw.lambdas == pytest.approx({"big": 0.2, "rare": 0.8})
    assert tw.loss_factor("rare") == pytest.approx(0.8 / 0.1)
    assert tw.loss_factor("big") == pytest.approx(0.2 / 0.9)
    # mean loss factor over the data is 1: 0.9 * (0.2/0.9) + 0.1 * 8
    assert 0.9 * tw.loss_factor("big") + 0.1 * tw.loss_factor("rare") == pytest.approx(1.0)
    assert tw.sampling_probs() == pytest.approx({"big": 0.9, "rare": 0.1})  # loss mode keeps the mixture
    ts = TaskWeighter({"big": 90, "rare": 10}, mode="sampling", initial="uniform")
    assert ts.lambdas == {"big": 0.5, "rare": 0.5}
    ts.update({"big": 0.9, "rare": 0.6}, step=1)
    assert ts.sampling_probs() == pytest.approx({"big": 0.2, "rare": 0.8})
    assert ts.loss_factor("rare") == 1.0


def test_task_weighter_unscored_task_keeps_its_share() -> None:
    tw = TaskWeighter({"a": 40, "b": 40, "public": 20})
    tw.update({"a": 0.9, "b": 0.6}, step=1)  # public data is not evaluated
    assert tw.lambdas["public"] == pytest.approx(0.2)
    assert tw.lambdas["a"] == pytest.approx(0.8 * 0.2) and tw.lambdas["b"] == pytest.approx(0.8 * 0.8)
    with pytest.raises(DataError, match="tasks not in training"):
        tw.update({"zzz": 0.5}, step=2)


def test_task_weighter_disabled_records_but_keeps_lambda() -> None:
    tw = TaskWeighter({"a": 1, "b": 3}, enabled=False)
    tw.update({"a": 0.1, "b": 0.9}, step=1)
    assert tw.lambdas == pytest.approx({"a": 0.25, "b": 0.75}) and len(tw.history) == 1
