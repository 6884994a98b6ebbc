"""Replacement gate (§2, "model evaluation and replacement analysis"): pairwise judgments -> proceed/hold.

Input: one row per judged prompt, ``outcome`` ∈ {win, tie, loss} from the candidate's side (vs the
production model), an optional ``category`` (e.g. relevance, policy, writing) and an optional ``reason``.

The stated rule (`GateRule`, every threshold a field): the candidate **proceeds** to online A/B only if all of

1. enough evidence: at least ``min_judgments`` judgments;
2. it is preferred: the one-sided Wilson lower confidence bound (at ``confidence``) of the decisive win rate
   wins / (wins + losses) is at least ``min_win_rate_lcb`` — ties carry no preference and are left out;
3. no category regresses badly: in every category with at least ``min_category_judgments`` judgments, the
   loss share losses / judgments is at most ``max_category_loss_share``;
4. no losses at all in a ``blocking_categories`` category (e.g. policy), however few judgments it has.

Otherwise the decision is **hold**, and the report lists every failed check with its numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import polars as pl

from adnanny_eval.errors import MAX_SHOWN, AdNannyEvalError, LabelError, shown
from adnanny_eval.report import markdown_table

__all__ = ["GateReport", "GateRule", "gate_report", "wilson_lower_bound"]

_OUTCOMES = {
    "win": "win",
    "w": "win",
    "candidate": "win",
    "better": "win",
    "tie": "tie",
    "t": "tie",
    "draw": "tie",
    "same": "tie",
    "loss": "loss",
    "l": "loss",
    "lose": "loss",
    "baseline": "loss",
    "worse": "loss",
}


@dataclass(frozen=True)
class GateRule:
    """Thresholds of the proceed/hold rule (see the module docstring); validated on construction."""

    min_judgments: int = 30
    confidence: float = 0.95
    min_win_rate_lcb: float = 0.5
    max_category_loss_share: float = 0.35
    min_category_judgments: int = 10
    blocking_categories: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Values often come from TOML: check types as well as ranges, and report every bad key at once.
        problems: list[str] = []

        def number(key: str, *, integer: bool) -> float | None:
            value = getattr(self, key)
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok:
                kind = "an integer" if integer else "a number"
                problems.append(f"`{key}` must be {kind}, got {value!r}")
                return None
            return value

        for key, lo in (("min_judgments", 1), ("min_category_judgments", 1)):
            v = number(key, integer=True)
            if v is not None and v < lo:
                problems.append(f"`{key}` must be >= {lo}, got {v}")
        v = number("confidence", integer=False)
        if v is not None and not 0.5 <= v < 1:
            problems.append(f"`confidence` must be in [0.5, 1), got {v}")
        for key in ("min_win_rate_lcb", "max_category_loss_share"):
            v = number(key, integer=False)
            if v is not None and not 0 <= v <= 1:
                problems.append(f"`{key}` must be in [0, 1], got {v}")
        cats = self.blocking_categories
        if isinstance(cats, str):  # "policy,safety" from a flag or a TOML string
            cats = tuple(cats.split(","))
        if not all(isinstance(c, str) for c in cats):
            problems.append(f"`blocking_categories` must be category names, got {cats!r}")
            cats = ()
        if problems:
            raise AdNannyEvalError("invalid gate rule: " + "; ".join(problems) + " — fix these keys")
        object.__setattr__(self, "blocking_categories", tuple(c.strip().lower() for c in cats if c.strip()))

    def describe(self) -> str:
        text = (
            f"proceed iff n >= {self.min_judgments}; Wilson {self.confidence:.0%} lower bound of "
            f"wins/(wins+losses) >= {self.min_win_rate_lcb:.2f}; loss share <= {self.max_category_loss_share:.0%} "
            f"in every category with >= {self.min_category_judgments} judgments"
        )
        if self.blocking_categories:
            text += f"; no loss in {', '.join(self.blocking_categories)}"
        return text


def wilson_lower_bound(successes: int, trials: int, confidence: float = 0.95) -> float:
    """One-sided Wilson score lower bound of a binomial proportion; NaN for 0 trials."""
    if trials <= 0:
        return math.nan
    z = NormalDist().inv_cdf(confidence)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denom)


@dataclass(frozen=True)
class GateReport:
    """Counts, per-category breakdown, top reasons, the checks and the decision."""

    decision: str  # "proceed" | "hold"
    rule: GateRule
    n: int
    wins: int
    ties: int
    losses: int
    win_rate_lcb: float
    categories: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    top_loss_reasons: list[tuple[str, int]]
    top_win_reasons: list[tuple[str, int]]

    @property
    def failed(self) -> list[str]:
        return [c["detail"] for c in self.checks if not c["passed"]]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rule"]["description"] = self.rule.describe()
        d["win_rate_lcb"] = None if math.isnan(self.win_rate_lcb) else self.win_rate_lcb
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_markdown(self) -> str:
        decisive = self.wins + self.losses
        rate = f"{self.wins / decisive:.1%}" if decisive else "n/a"
        lcb = "n/a" if math.isnan(self.win_rate_lcb) else f"{self.win_rate_lcb:.1%}"
        lines = [
            "## Replacement gate",
            "",
            f"**Decision: {self.decision.upper()}** — rule: {self.rule.describe()}.",
            "",
            f"{self.n} judgments: {self.wins} wins, {self.ties} ties, {self.losses} losses; decisive win rate "
            f"{rate} (lower bound {lcb}).",
            "",
            markdown_table(
                ["Category", "n", "Win", "Tie", "Loss", "Win rate", "Loss share"],
                [
                    [
                        c["category"],
                        str(c["n"]),
                        str(c["win"]),
                        str(c["tie"]),
                        str(c["loss"]),
                        "n/a" if c["win_rate"] is None else f"{c['win_rate']:.1%}",
                        f"{c['loss_share']:.1%}",
                    ]
                    for c in self.categories
                ],
            ),
            "",
            "Checks:",
            "",
        ]
        lines += [f"- [{'x' if c['passed'] else ' '}] {c['detail']}" for c in self.checks]
        for title, reasons in (
            ("Top loss reasons", self.top_loss_reasons),
            ("Top win reasons", self.top_win_reasons),
        ):
            if reasons:
                lines += ["", f"{title}:", ""] + [f"- {r} ({k})" for r, k in reasons]
        return "\n".join(lines) + "\n"


def _norm_outcomes(frame: pl.DataFrame, col: str, ids: list[Any]) -> list[str]:
    out = []
    bad: list[tuple[Any, Any]] = []
    for i, raw in enumerate(frame.get_column(col).to_list()):
        key = None if raw is None else str(raw).strip().lower()
        if key not in _OUTCOMES:
            bad.append((ids[i], raw))
        else:
            out.append(_OUTCOMES[key])
    if bad:
        listed = shown([f"{i!r}: {v!r}" for i, v in bad[:MAX_SHOWN]], len(bad))
        raise LabelError(
            f"`{col}` must be win, tie or loss (candidate's side); {len(bad)} row(s) are not ({listed}); "
            "fix those rows or drop them"
        )
    return out


def gate_report(
    judgments: pl.DataFrame | str | os.PathLike[str],
    rule: GateRule | None = None,
    *,
    outcome_col: str = "outcome",
    category_col: str = "category",
    reason_col: str = "reason",
    top_reasons: int = 5,
) -> GateReport:
    """Aggregate win/tie/loss judgments into a `GateReport` with a proceed/hold decision."""
    rule = rule or GateRule()
    if not isinstance(judgments, pl.DataFrame):
        from adnanny_eval.io import read_table

        judgments = read_table(judgments)
    if outcome_col not in judgments.columns:
        raise AdNannyEvalError(
            f"judgments have no `{outcome_col}` column (columns: {', '.join(judgments.columns)}); "
            "name it with `outcome_col` (`--outcome-col`)"
        )
    n = judgments.height
    ids = (
        judgments.get_column("id").to_list() if "id" in judgments.columns else [f"row {i}" for i in range(n)]
    )
    outcomes = _norm_outcomes(judgments, outcome_col, ids)
    cats = (
        [
            ("uncategorized" if c is None else str(c).strip().lower())
            for c in judgments.get_column(category_col).to_list()
        ]
        if category_col in judgments.columns
        else ["all"] * n
    )
    reasons = (
        [
            ("" if r is None else " ".join(str(r).split()).rstrip(".").lower())
            for r in judgments.get_column(reason_col).to_list()
        ]
        if reason_col in judgments.columns
        else [""] * n
    )
    tally = Counter(outcomes)
    wins, ties, losses = tally["win"], tally["tie"], tally["loss"]
    lcb = wilson_lower_bound(wins, wins + losses, rule.confidence)
    per_cat: dict[str, Counter[str]] = {}
    for c, o in zip(cats, outcomes, strict=True):
        per_cat.setdefault(c, Counter())[o] += 1
    categories = []
    for c in sorted(per_cat):
        t = per_cat[c]
        cn = sum(t.values())
        dec = t["win"] + t["loss"]
        categories.append(
            {
                "category": c,
                "n": cn,
                "win": t["win"],
                "tie": t["tie"],
                "loss": t["loss"],
                "win_rate": t["win"] / dec if dec else None,
                "loss_share": t["loss"] / cn,
            }
        )
    checks = [
        {
            "name": "min_judgments",
            "passed": n >= rule.min_judgments,
            "detail": f"{n} judgments (need >= {rule.min_judgments})",
        },
        {
            "name": "win_rate_lcb",
            "passed": (not math.isnan(lcb)) and lcb >= rule.min_win_rate_lcb,
            "detail": (
                f"win-rate lower bound {lcb:.3f} (need >= {rule.min_win_rate_lcb:.3f}; "
                f"{wins} wins vs {losses} losses)"
            )
            if not math.isnan(lcb)
            else "no decisive judgments (all ties): the candidate shows no preference",
        },
    ]
    for c in categories:
        if c["n"] >= rule.min_category_judgments:
            checks.append(
                {
                    "name": f"loss_share:{c['category']}",
                    "passed": c["loss_share"] <= rule.max_category_loss_share,
                    "detail": f"category `{c['category']}` loss share {c['loss_share']:.1%} over {c['n']} judgments "
                    f"(max {rule.max_category_loss_share:.0%})",
                }
            )
        if c["category"] in rule.blocking_categories:
            checks.append(
                {
                    "name": f"blocking:{c['category']}",
                    "passed": c["loss"] == 0,
                    "detail": f"blocking category `{c['category']}` has {c['loss']} loss(es) (allowed 0)",
                }
            )
    decision = "proceed" if all(c["passed"] for c in checks) else "hold"

    def top(kind: str) -> list[tuple[str, int]]:
        cnt = Counter(r for r, o in zip(reasons, outcomes, strict=True) if o == kind and r)
        return cnt.most_common(top_reasons)

    return GateReport(
        decision=decision,
        rule=rule,
        n=n,
        wins=wins,
        ties=ties,
        losses=losses,
        win_rate_lcb=lcb,
        categories=categories,
        checks=checks,
        top_loss_reasons=top("loss"),
        top_win_reasons=top("win"),
    )
