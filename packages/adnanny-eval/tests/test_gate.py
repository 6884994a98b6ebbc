"""Replacement gate: the stated rule decides proceed/hold, and every failed check is reported."""

from __future__ import annotations

import polars as pl
import pytest

from adnanny_eval import AdNannyEvalError, GateRule, LabelError, gate_report
from adnanny_eval.gate import wilson_lower_bound


def judgments(win: int, tie: int, loss: int, category: str = "relevance") -> pl.DataFrame:
    outcomes = ["win"] * win + ["tie"] * tie + ["loss"] * loss
    return pl.DataFrame(
        {
            "id": [f"{category}-{i}" for i in range(len(outcomes))],
            "outcome": outcomes,
            "category": [category] * len(outcomes),
            "reason": [f"{o} reason" for o in outcomes],
        }
    )


def test_wilson_lower_bound_known_values():
    # 1.6449 one-sided z at 95%: 50/100 -> ~0.418; 0 trials -> nan
    assert wilson_lower_bound(50, 100) == pytest.approx(0.4183, abs=1e-3)
    assert wilson_lower_bound(100, 100) > 0.97
    assert wilson_lower_bound(0, 0) != wilson_lower_bound(0, 0)


def test_clear_win_proceeds():
    rep = gate_report(judgments(60, 20, 20))
    assert rep.decision == "proceed" and rep.failed == []
    assert (rep.wins, rep.ties, rep.losses) == (60, 20, 20)
    assert rep.top_loss_reasons == [("loss reason", 20)]


def test_coin_flip_holds_on_win_rate():
    rep = gate_report(judgments(40, 20, 40))
    assert rep.decision == "hold"
    assert any("win-rate lower bound" in f for f in rep.failed)


def test_category_regression_holds_even_when_overall_wins():
    frame = pl.concat([judgments(90, 10, 0, "relevance"), judgments(4, 2, 6, "writing")])
    rep = gate_report(frame, GateRule(max_category_loss_share=0.35, min_category_judgments=10))
    assert rep.decision == "hold"
    assert rep.failed == ["category `writing` loss share 50.0% over 12 judgments (max 35%)"]


def test_blocking_category_and_min_judgments():
    frame = pl.concat([judgments(50, 0, 1, "relevance"), judgments(2, 0, 1, "policy")])
    assert gate_report(frame).decision == "proceed"
    rep = gate_report(frame, GateRule(blocking_categories=("Policy",)))
    assert rep.decision == "hold" and "blocking category `policy` has 1 loss(es)" in rep.failed[0]
    assert gate_report(judgments(10, 0, 0)).decision == "hold"  # fewer than 30


def test_all_ties_hold_and_outcome_synonyms():
    assert "no decisive judgments" in gate_report(judgments(0, 40, 0)).failed[0]
    frame = pl.DataFrame({"outcome": [" WIN", "w", "Tie", "L", "loss"]})
    rep = gate_report(frame, GateRule(min_judgments=1))
    assert (rep.wins, rep.ties, rep.losses) == (2, 1, 2)


def test_bad_outcome_and_rule_errors():
    with pytest.raises(LabelError, match=r"`outcome` must be win, tie or loss.*'j2': 'maybe'"):
        gate_report(pl.DataFrame({"id": ["j1", "j2"], "outcome": ["win", "maybe"]}))
    with pytest.raises(AdNannyEvalError, match=r"`max_category_loss_share` must be in \[0, 1\], got 2"):
        GateRule(max_category_loss_share=2)
    with pytest.raises(AdNannyEvalError, match=r"no `outcome` column"):
        gate_report(pl.DataFrame({"verdict": ["win"]}))


def test_report_renders_decision_and_rule():
    rep = gate_report(judgments(60, 20, 20))
    md = rep.to_markdown()
    assert "**Decision: PROCEED**" in md and "Wilson 95% lower bound" in md
    assert '"decision": "proceed"' in rep.to_json()


def test_category_check_applies_from_exactly_min_category_judgments():
    frame = pl.concat([judgments(60, 10, 0, "relevance"), judgments(3, 3, 4, "writing")])  # writing: n = 10
    rep = gate_report(frame, GateRule(min_category_judgments=10, max_category_loss_share=0.35))
    assert rep.failed == ["category `writing` loss share 40.0% over 10 judgments (max 35%)"]
    assert gate_report(frame, GateRule(min_category_judgments=11)).decision == "proceed"


def test_ties_carry_no_preference():
    # 30 wins vs 10 losses among 100: decisive win rate 75% (LCB ~0.62) proceeds; over all n it would hold
    rep = gate_report(judgments(30, 60, 10))
    assert rep.decision == "proceed" and rep.win_rate_lcb == pytest.approx(wilson_lower_bound(30, 40))


def test_rule_types_from_toml_are_checked_all_at_once():
    with pytest.raises(
        AdNannyEvalError,
        match=r"`min_judgments` must be an integer, got '30'; `confidence` must be in \[0.5, 1\), got 2",
    ):
        GateRule(min_judgments="30", confidence=2)
    assert GateRule(blocking_categories="Policy, safety").blocking_categories == ("policy", "safety")
