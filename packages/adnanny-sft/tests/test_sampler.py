"""Sampling: plain epochs, weighted task sampling, length bucketing, exact state round trip."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from adnanny_sft.errors import ConfigError, DataError
from adnanny_sft.sampler import MixtureSampler


def _sampler(**kw) -> MixtureSampler:
    tasks = ["a"] * 90 + ["b"] * 10
    lengths = [(i * 37) % 101 for i in range(100)]
    return MixtureSampler(tasks, lengths, batch_size=kw.pop("batch_size", 8), seed=kw.pop("seed", 3), **kw)


def test_plain_epoch_visits_every_sample_once() -> None:
    s = _sampler()
    seen: list[int] = []
    while s.peek_epoch() == 0:
        seen += s.next_batch()[1]
    assert sorted(seen) == list(range(100))
    nxt = []
    while s.peek_epoch() == 1:
        nxt += s.next_batch()[1]
    assert sorted(nxt) == list(range(100)) and nxt != seen


def test_bucketing_groups_similar_lengths() -> None:
    def padding(s: MixtureSampler) -> int:
        total = 0
        for _ in range(12):
            _, idx = s.next_batch()
            ls = [s.lengths[i] for i in idx]
            total += max(ls) * len(ls) - sum(ls)
        return total

    assert padding(_sampler(bucket_batches=8)) < 0.5 * padding(_sampler(bucket_batches=1))


def test_weighted_task_sampling_follows_lambda() -> None:
    s = _sampler(bucket_batches=1)
    s.set_task_probs({"a": 0.2, "b": 0.8})
    tasks = Counter()
    for _ in range(250):
        for i in s.next_batch()[1]:
            tasks[s.tasks[i]] += 1
    share_b = tasks["b"] / sum(tasks.values())
    assert 0.75 < share_b < 0.85  # 2000 draws, sd ≈ 0.009
    # within a task, samples are drawn without replacement until the task is exhausted
    s2 = _sampler(bucket_batches=1)
    s2.set_task_probs({"a": 0.0, "b": 1.0})
    first10 = [i for _ in range(2) for i in s2.next_batch()[1]][:10]
    assert sorted(first10) == list(range(90, 100))


def test_state_round_trip_continues_the_same_sequence() -> None:
    s = _sampler()
    s.set_task_probs({"a": 0.5, "b": 0.5})
    for _ in range(7):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))  # must survive JSON
    expected = [s.next_batch() for _ in range(30)]
    t = _sampler(seed=999)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(30)] == expected


def test_errors() -> None:
    with pytest.raises(ConfigError, match="`batch_size` must be >= 1"):
        MixtureSampler(["a"], [1], batch_size=0, seed=0)
    with pytest.raises(DataError, match="lack tasks"):
        _sampler().set_task_probs({"a": 1.0})
    with pytest.raises(DataError, match="saved for 100 samples"):
        MixtureSampler(["a"], [1], batch_size=1, seed=0).load_state_dict(_sampler().state_dict())


def test_class_balanced_sampling_draws_classes_equally() -> None:
    # task a: 80 "non-defect" + 10 "defect"; task b (generation): no class
    tasks = ["a"] * 90 + ["b"] * 10
    classes = ["non-defect"] * 80 + ["defect"] * 10 + [None] * 10
    s = MixtureSampler(tasks, [5] * 100, batch_size=10, seed=1, bucket_batches=1, classes=classes)
    drawn = Counter()
    for _ in range(300):
        for i in s.next_batch()[1]:
            drawn[(s.tasks[i], classes[i])] += 1
    a_total = drawn[("a", "defect")] + drawn[("a", "non-defect")]
    assert 0.45 < drawn[("a", "defect")] / a_total < 0.55  # 1/9 of task a's rows, half of its draws
    assert 0.07 < drawn[("b", None)] / 3000 < 0.13  # the task keeps its natural share (10%)
    # within a class, rows are drawn without replacement until the class is exhausted
    s2 = MixtureSampler(tasks, [5] * 100, batch_size=1, seed=2, bucket_batches=1, classes=classes)
    defects = []
    while len(defects) < 10:
        i = s2.next_batch()[1][0]
        if classes[i] == "defect":
            defects.append(i)
    assert sorted(defects) == list(range(80, 90))
    # unbalanced sampling keeps the prior: about 1/9 of task a's draws are defects
    plain = _sampler(bucket_batches=1)
    assert plain.class_balanced is False


def test_class_balanced_state_round_trip_and_mismatch() -> None:
    classes = ["x", "y"] * 50
    s = MixtureSampler(["a"] * 100, [3] * 100, batch_size=4, seed=5, classes=classes)
    for _ in range(5):
        s.next_batch()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.next_batch() for _ in range(20)]
    t = MixtureSampler(["a"] * 100, [3] * 100, batch_size=4, seed=0, classes=classes)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(20)] == expected
    with pytest.raises(DataError, match="class_balanced"):
        MixtureSampler(["a"] * 100, [3] * 100, batch_size=4, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="one class per sample"):
        MixtureSampler(["a"] * 3, [3] * 3, batch_size=1, seed=0, classes=["x"])
