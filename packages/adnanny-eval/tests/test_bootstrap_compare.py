"""Paired bootstrap CIs and the candidate-vs-baseline comparison/report layout."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import balanced_accuracy_score

from adnanny_eval import (
    AdNannyEvalError,
    ComparisonReport,
    LabelError,
    compare_dataset,
    evaluate,
    paired_bootstrap_bacc,
)
from adnanny_eval.compare import compare_tables


@pytest.fixture
def three():
    rng = np.random.default_rng(11)
    n = 400
    y = rng.random(n) < 0.6
    cand = np.where(rng.random(n) < 0.85, y, ~y)
    base = np.where(rng.random(n) < 0.75, y, ~y)
    return y, cand, base


def test_multinomial_bootstrap_matches_index_resampling(three):
    y, c, b = three
    ci = paired_bootstrap_bacc(y, c, b, n_resamples=4000, seed=1)
    rng = np.random.default_rng(2)
    deltas = []

    def bacc(t, p):
        return ((t & p).sum() / t.sum() + (~t & ~p).sum() / (~t).sum()) / 2

    for _ in range(3000):  # the textbook paired bootstrap, by row indices
        idx = rng.integers(0, len(y), len(y))
        deltas.append(bacc(y[idx], c[idx]) - bacc(y[idx], b[idx]))
    lo, hi = np.quantile(deltas, [0.025, 0.975])
    assert abs(ci.delta[0] - lo) < 0.012 and abs(ci.delta[1] - hi) < 0.012
    # the interval's level is honoured: it holds ~95% of the independent index bootstrap (a 90% one ~90%)
    inside = np.mean((np.array(deltas) >= ci.delta[0]) & (np.array(deltas) <= ci.delta[1]))
    assert 0.935 < inside < 0.965
    ci80 = paired_bootstrap_bacc(y, c, b, n_resamples=4000, seed=1, level=0.8)
    inside80 = np.mean((np.array(deltas) >= ci80.delta[0]) & (np.array(deltas) <= ci80.delta[1]))
    assert 0.77 < inside80 < 0.83
    point = balanced_accuracy_score(y, c) - balanced_accuracy_score(y, b)
    assert ci.delta[0] < point < ci.delta[1]
    assert ci.candidate[0] < balanced_accuracy_score(y, c) < ci.candidate[1]


def test_bootstrap_is_seeded_and_records_settings(three):
    y, c, b = three
    a1 = paired_bootstrap_bacc(y, c, b, n_resamples=200, seed=5)
    a2 = paired_bootstrap_bacc(y, c, b, n_resamples=200, seed=5)
    a3 = paired_bootstrap_bacc(y, c, b, n_resamples=200, seed=6)
    assert a1 == a2 and a1 != a3
    d = a1.to_dict()
    assert d["n_resamples"] == 200 and d["seed"] == 5 and d["level"] == 0.95 and "paired" in d["method"]


def test_identical_models_have_zero_width_delta(three):
    y, c, _ = three
    ci = paired_bootstrap_bacc(y, c, c.copy(), n_resamples=300, seed=0)
    assert ci.delta == (0.0, 0.0)  # pairing: the same rows for both models


def test_bootstrap_counts_degenerate_resamples():
    y = np.array([True] * 30 + [False])  # one defect: many resamples miss it
    ci = paired_bootstrap_bacc(y, y, n_resamples=500, seed=0)
    assert 0 < ci.n_degenerate < 500 and ci.baseline is None
    # degenerate resamples are dropped, not propagated: the interval stays finite
    assert np.isfinite(ci.candidate).all() and ci.candidate[1] == 1.0


def test_bootstrap_argument_errors(three):
    y, c, b = three
    with pytest.raises(AdNannyEvalError, match=r"`n_resamples` must be >= 1, got 0"):
        paired_bootstrap_bacc(y, c, b, n_resamples=0)
    with pytest.raises(AdNannyEvalError, match=r"`level` must be in \(0, 1\), got 1.5"):
        paired_bootstrap_bacc(y, c, b, level=1.5)


def _comparison():
    gold = ["bad", "bad", "fair", "good", "good", "bad", "fair", "good"]
    cand = ["bad", "bad", "fair", "good", "fair", "bad", "bad", "good"]
    base = ["bad", "good", "good", "good", "bad", "bad", "fair", "fair"]
    return compare_dataset(
        "Dataset A",
        "bad",
        gold,
        cand,
        base,
        n_resamples=200,
        seed=0,
        candidate_name="AdNanny",
        baseline_name="4o-1120",
    )


def test_delta_row_is_candidate_minus_baseline():
    comp = _comparison()
    c, b = comp.candidate.to_paper(), comp.baseline.to_paper()
    d = comp.delta()
    assert "DR" not in d and "n" not in d
    for k in ("Model DR", "BACC", "Acc", "PosAcc", "PosPrec", "NegAcc", "NegPrec", "PosF1", "NegF1"):
        assert d[k] == pytest.approx(c[k] - b[k])
    assert comp.candidate.bacc == pytest.approx(0.9) and comp.baseline.bacc == pytest.approx(
        (0.8 + 2 / 3) / 2
    )


def test_markdown_follows_table_1_layout():
    md = ComparisonReport((_comparison(),)).view_markdown("bad")
    lines = md.splitlines()
    assert lines[2] == (
        "| Dataset | Model | Model DR | BACC | Acc | PosAcc | PosPrec | NegAcc | NegPrec | PosF1 | NegF1 |"
    )
    assert lines[4].startswith("| Dataset A DR 37.50 | 4o-1120 | 37.50 | 73.33 |")
    assert lines[5].startswith("|  | AdNanny | 50.00 | 90.00 |")
    assert lines[6].startswith("|  | Delta | 12.50 | 16.67 |")
    assert "200 resamples, seed 0" in md


def test_ad_user_table_5_layout_with_auc():
    comp = compare_dataset(
        "Dataset G",
        "ad-user",
        [0, 1, 2, 0],
        [0, 1, 1, 1],
        [1, 1, 1, 0],
        candidate_score=[0.1, 0.9, 0.8, 0.4],
        baseline_score=[0.6, 0.7, 0.5, 0.2],
        n_resamples=0,
    )
    md = ComparisonReport((comp,)).view_markdown("ad-user")
    assert "| Dataset | Model | Model RR | BACC | Acc | PosAcc | NegAcc | AUC |" in md
    assert "Dataset G RR 50.00" in md and comp.ci is None
    assert comp.candidate.auc == 1.0 and comp.delta()["AUC"] == pytest.approx(100 - 75)


def test_report_files(tmp_path):
    rep = ComparisonReport((_comparison(),))
    paths = rep.write(tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = pl.read_csv(paths["csv"])
    assert frame.get_column("model").to_list() == ["4o-1120", "AdNanny", "Delta"]
    assert frame.filter(pl.col("model") == "Delta").get_column("BACC").item() == pytest.approx(
        16.6667, abs=1e-3
    )
    assert frame.get_column("bootstrap_resamples").to_list() == [200] * 3
    assert frame.get_column("bootstrap_seed").to_list() == [0] * 3
    assert frame.get_column("bootstrap_level").to_list() == [0.95] * 3
    data = json.loads(paths["json"].read_text())
    entry = data["views"]["bad"][0]
    assert entry["bootstrap"]["n_resamples"] == 200 and entry["bootstrap"]["seed"] == 0
    assert entry["candidate"]["BACC"] == pytest.approx(90.0) and data["units"] == "percent"


def test_report_write_is_all_or_nothing(tmp_path, monkeypatch):
    import adnanny_eval.plots

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(adnanny_eval.plots, "render_bacc_png", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        ComparisonReport((_comparison(),)).write(tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_compare_tables_aligns_baseline_joined_in_another_order():
    rng = np.random.default_rng(4)
    n = 300
    ids = [f"r{i}" for i in range(n)]
    labels = np.array(["bad", "fair", "good"])
    gold = pl.DataFrame({"id": ids, "label": labels[rng.integers(0, 3, n)]})
    cand = pl.DataFrame({"id": ids, "label": labels[rng.integers(0, 3, n)]}).reverse()
    base = pl.DataFrame({"id": ids, "label": labels[rng.integers(0, 3, n)]})
    base = base.sample(fraction=1.0, shuffle=True, seed=1)
    comp = compare_tables("X", "bad", gold, cand, base, n_resamples=50)
    for table, got in ((cand, comp.candidate), (base, comp.baseline)):
        aligned = gold.join(table, on="id", suffix="_p")
        ref = evaluate(aligned.get_column("label"), aligned.get_column("label_p"), "bad")
        assert got == ref


def test_compare_tables_names_file_and_column_and_requires_a_named_score():
    gold = pl.DataFrame({"id": ["a", "b"], "label": ["bad", "good"]})
    pred = pl.DataFrame({"id": ["a", "b"], "label": ["bad", "meh"], "p": [0.1, 0.9]})
    with pytest.raises(LabelError, match=r"`preds.csv:label` has 1 row\(s\) with label\(s\) \['meh'\].*'b'"):
        compare_tables("X", "bad", gold, pred, sources={"candidate": "preds.csv"}, n_resamples=0)
    ok = pred.with_columns(pl.Series("label", ["bad", "good"]))
    with pytest.raises(AdNannyEvalError, match=r"`preds.csv` has no score column 'prob'.*`--score-col`"):
        compare_tables("X", "bad", gold, ok, score_col="prob", sources={"candidate": "preds.csv"})
    assert compare_tables("X", "bad", gold, ok, score_col="p", n_resamples=0).candidate.auc == 1.0
    assert compare_tables("X", "bad", gold, ok, n_resamples=0).candidate.auc is None  # no `score` column


def test_degenerate_comparison_warns_naming_model_and_dataset():
    from adnanny_eval import DegenerateMetricWarning

    match = r"BACC, NegAcc undefined for AdNanny on Dataset Z \(bad view\)"
    with pytest.warns(DegenerateMetricWarning, match=match):
        comp = compare_dataset("Dataset Z", "bad", ["good", "fair"], ["good", "bad"], candidate_name="AdNanny")
    assert np.isnan(comp.candidate.bacc) and comp.to_dict()["candidate"]["BACC"] is None  # NaN -> null, not 0
