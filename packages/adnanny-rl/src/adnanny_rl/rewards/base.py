"""The one reward signature.

A reward is any callable ``reward(rows, completions, *, group_size) -> RewardOutput`` where

* ``rows`` — one input row per completion (dicts with the task's input fields and, for labeling tasks, the gold
  labels), prompt-major: rows ``p*G .. p*G+G-1`` are the G completions of prompt p (the same row repeated);
* ``completions`` — the generated assistant texts, same order and length;
* ``group_size`` — G, which batch rewards (eq. 8) need to form their batches across prompts.

It returns per-completion totals and named components (logged per task: mean reward and per component). A
reward never invents a label for an unparseable output; it scores the format penalty instead. Users add their
own rewards by writing such a callable (a function works: return a list of floats and it is wrapped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adnanny_rl.errors import RewardError

__all__ = ["Reward", "RewardOutput", "as_output"]


@dataclass(frozen=True)
class RewardOutput:
    """`total[i]` is completion i's reward; `components[name][i]` its parts (they need not sum to total)."""

    total: list[float]
    components: dict[str, list[float]] = field(default_factory=dict)


class Reward(Protocol):
    def __call__(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *, group_size: int
                 ) -> RewardOutput | Sequence[float]: ...


def as_output(value: RewardOutput | Sequence[float], n: int, *, task: str) -> RewardOutput:
    """Normalise what a reward returned, refusing the wrong length or a non-finite value by task and row."""
    out = value if isinstance(value, RewardOutput) else RewardOutput(total=[float(v) for v in value])
    if len(out.total) != n:
        raise RewardError(f"task `{task}`: the reward returned {len(out.total)} values for {n} completions")
    for i, v in enumerate(out.total):
        if not (v == v and abs(v) != float("inf")):
            raise RewardError(f"task `{task}`: the reward of row {i} is {v!r}")
    return out
