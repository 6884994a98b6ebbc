"""Labeling-task reward: agreement of the parsed labels with gold, plus a format term.

``r = format_reward + Σ_f w_f · [parsed_f == gold_f] / Σ_f w_f`` for an output that parses, and
``r = format_penalty`` for one that does not (no default label is ever substituted). The parser and label sets are
the task definition's (adnanny-cook), so nothing here restates a tag or a value. Fields without a gold value in
a row (an optional label the dataset lacks) are left out of that row's agreement.

``agreement="defect"`` scores each field that has defect values in its binary defect view instead — parsed and
gold agree when both are defects or both are not (``bad`` vs ``fair``/``good``: the paper's Bad view, the one its
Tables 1-4 and the calibrated threshold use); fields without defect values stay exact. WHY: a grade the policy
cannot yet tell apart is a coin flip per sample, so the exact reward's advantages on those rows are noise, and that
noise moves the weights the defect decision lives on (measured on the shared fixture, README "Learning").
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
                 format_reward: float = 0.0, format_penalty: float = -1.0, agreement: str = "exact") -> None:
        if spec.kind != "label":
            raise RLConfigError(f"`LabelReward` needs a labeling task; `{spec.name}` is a {spec.kind} task")
        weights = dict(field_weights) if field_weights else {f: 1.0 for f in spec.field_order}
        unknown = sorted(set(weights) - set(spec.field_order))
        if unknown:
            raise RLConfigError(f"`field_weights` names {unknown}, not label fields of `{spec.name}` "
                                f"({list(spec.field_order)})")
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise RLConfigError(f"`field_weights` must be >= 0 with one > 0, got {weights}")
        if agreement not in ("exact", "defect"):
            raise RLConfigError(f"`agreement` must be `exact` or `defect`, got {agreement!r}")
        if agreement == "defect" and not any(spec.defect_values.get(f) for f in weights):
            raise RLConfigError(f"`agreement` = `defect`: no weighted field of `{spec.name}` has defect values "
                                f"({dict(spec.defect_values)})")
        self.spec, self.weights, self.mode = spec, weights, mode
        self.defect = ({f: frozenset(spec.check_value(f, v) for v in spec.defect_values[f])
                        for f in weights if spec.defect_values.get(f)} if agreement == "defect" else {})
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
                got, want = labels.get(f), self.spec.check_value(f, g)
                if f in self.defect:
                    got, want = got in self.defect[f], want in self.defect[f]
                num += w * float(got == want)
            a = num / den if den else 0.0
            agree.append(a)
            parsed.append(1.0)
            total.append(self.format_reward + a)
        return RewardOutput(total=total, components={"agreement": agree, "parsed": parsed})
