"""Labeling-task reward: agreement of the parsed labels with gold, plus a format term.

``r = format_reward + Σ_f w_f · [parsed_f == gold_f] / Σ_f w_f`` for an output that parses, and
``r = format_penalty`` for one that does not (no default label is ever substituted). The parser and label sets are
the task definition's (adnanny-cook), so nothing here restates a tag or a value. Fields without a gold value in
a row (an optional label the dataset lacks) are left out of that row's agreement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adnanny_rl.errors import RLConfigError
from adnanny_rl.rewards.base import RewardOutput

__all__ = ["LabelReward"]


class LabelReward:
    """Reward for a labeling task given by its adnanny-cook `TaskSpec`."""

    def __init__(self, spec: Any, *, field_weights: Mapping[str, float] | None = None, mode: str | None = None,
                 format_reward: float = 0.0, format_penalty: float = -1.0) -> None:
        if spec.kind != "label":
            raise RLConfigError(f"`LabelReward` needs a labeling task; `{spec.name}` is a {spec.kind} task")
        weights = dict(field_weights) if field_weights else {f: 1.0 for f in spec.field_order}
        unknown = sorted(set(weights) - set(spec.field_order))
        if unknown:
            raise RLConfigError(f"`field_weights` names {unknown}, not label fields of `{spec.name}` "
                                f"({list(spec.field_order)})")
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise RLConfigError(f"`field_weights` must be >= 0 with one > 0, got {weights}")
        self.spec, self.weights, self.mode = spec, weights, mode
        self.format_reward, self.format_penalty = float(format_reward), float(format_penalty)
        self.name = f"labels:{spec.name}"

    def __call__(self, rows: Sequence[Mapping[str, Any]], completions: Sequence[str], *, group_size: int = 1
                 ) -> RewardOutput:
        from adnanny_cook.errors import ParseError

        total, agree, parsed = [], [], []
        for row, text in zip(rows, completions, strict=True):
            try:
                labels = self.spec.parse(text, mode=self.mode).labels
            except ParseError:
                total.append(self.format_penalty)
                agree.append(0.0)
                parsed.append(0.0)
                continue
            gold = row.get("labels", row)
            num = den = 0.0
            for f, w in self.weights.items():
                g = gold.get(f)
                if g is None or w == 0:
                    continue
                den += w
                num += w * float(labels.get(f) == self.spec.check_value(f, g))
            a = num / den if den else 0.0
            agree.append(a)
            parsed.append(1.0)
            total.append(self.format_reward + a)
        return RewardOutput(total=total, components={"agreement": agree, "parsed": parsed})
