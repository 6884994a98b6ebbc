"""Which column gives AUC: `label_probs` per view (the fair view gets P(good)), never another view's `score`."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from adnanny_eval import LabelError, ScoreSourceWarning, compare_tables, evaluate_files, to_positive
from adnanny_eval.cli import main
from adnanny_eval.errors import AdNannyEvalError
from sklearn.metrics import roc_auc_score


@pytest.fixture
def files(tmp_path):
    """Gold + predictions as serve writes them: `score` = P(fair) + P(good) (bad view), `label_probs`."""
    rng = np.random.default_rng(8)
    n = 200
    ids = [f"r{i}" for i in range(n)]
    values = np.array(["bad", "fair", "good"])
    gold = values[rng.integers(0, 3, n)]
    # probabilities that lean towards the gold class; P(fair) is large on gold-bad rows, so the bad view's
    # score ranks the fair view's classes differently from P(good)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), np.searchsorted(values, gold)] += 1.5
    logits[gold == "bad", 1] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = values[probs.argmax(1)]
    label_probs = [
        json.dumps({"label": dict(zip(values.tolist(), row.tolist(), strict=True))}) for row in probs
    ]
    pl.DataFrame({"id": ids, "label": gold}).write_csv(tmp_path / "g.csv")
    frame = pl.DataFrame(
        {
            "id": ids,
            "label": pred,
            "score": probs[:, 1] + probs[:, 2],
            "label_probs": label_probs,
            "parse_error": None,
        }
    )
    frame.write_parquet(tmp_path / "p.parquet")
    frame.drop("label_probs").write_csv(tmp_path / "p_noprobs.csv")
    return tmp_path, gold, probs


def test_fair_view_auc_is_p_good_from_label_probs(files):
    d, gold, probs = files
    y = to_positive(gold, "fair")
    want = roc_auc_score(y, probs[:, 2])
    assert abs(roc_auc_score(y, probs[:, 1] + probs[:, 2]) - want) > 0.01  # reading `score` would differ
    m = evaluate_files(d / "g.csv", d / "p.parquet", "fair")
    assert m.auc == pytest.approx(want, abs=1e-12)
    # the generic view of the same defect values reads the same probabilities
    g = evaluate_files(d / "g.csv", d / "p.parquet", "defect", defect="bad,fair")
    assert g.auc == pytest.approx(want, abs=1e-12)
    # bad view: P(fair) + P(good), equal to the `score` column serve writes
    b = evaluate_files(d / "g.csv", d / "p.parquet", "bad")
    assert b.auc == pytest.approx(
        roc_auc_score(to_positive(gold, "bad"), probs[:, 1] + probs[:, 2]), abs=1e-12
    )
    comp = compare_tables(
        "X", "fair", pl.read_csv(d / "g.csv"), pl.read_parquet(d / "p.parquet"), n_resamples=0
    )
    assert comp.extra["auc_source"] == {"candidate": "label_probs[label]"}


def test_fair_view_refuses_the_bad_views_score(files):
    d, _, _ = files
    with pytest.warns(
        ScoreSourceWarning, match=r"it has no `label_probs`, and `score` is P\(non-defect\) of the bad view"
    ):
        m = evaluate_files(d / "g.csv", d / "p_noprobs.csv", "fair")
    assert m.auc is None
    with pytest.raises(
        AdNannyEvalError, match=r"`.*p_noprobs.csv:score` cannot be the AUC score of view `fair`"
    ):
        evaluate_files(d / "g.csv", d / "p_noprobs.csv", "fair", score_col="score")
    # ... while the bad view still uses it (it is that view's P(non-defect))
    ok = evaluate_files(d / "g.csv", d / "p_noprobs.csv", "bad")
    assert ok.auc is not None


def test_cli_says_why_fair_auc_is_left_out_and_names_the_column(files, capsys):
    d, _, _ = files
    base = [
        "report",
        "--gold",
        str(d / "g.csv"),
        "--pred",
        str(d / "p_noprobs.csv"),
        "--view",
        "fair",
        "--json",
    ]
    assert main(base) == 0
    out = capsys.readouterr()
    assert "AUC" not in json.loads(out.out)
    assert "warning: AUC left out" in out.err and "p_noprobs.csv` under view `fair`" in out.err
    assert main([*base, "--score-col", "score"]) == 2
    assert "p_noprobs.csv:score` cannot be the AUC score of view `fair`" in capsys.readouterr().err


def test_scores_outside_unit_interval_name_column_and_row(tmp_path):
    pl.DataFrame({"id": list("abcd"), "label": ["bad", "good", "good", "bad"]}).write_csv(tmp_path / "g.csv")
    pl.DataFrame(
        {"id": list("abcd"), "label": ["bad", "good", "good", "bad"], "score": [0.1, 1.7, 0.8, -0.2]}
    ).write_csv(tmp_path / "p.csv")
    with pytest.raises(
        LabelError,
        match=r"p.csv:score` has 2 value\(s\) outside \[0, 1\] \(ids: 'b', 'd'; values: 1.7, -0.2\)",
    ):
        evaluate_files(tmp_path / "g.csv", tmp_path / "p.csv", "bad")
    probs = [{"label": {"bad": 0.9, "good": 0.1}}, {"label": {"bad": 0.1, "good": 1.4}}] + [
        {"label": {"bad": 0.5, "good": 0.5}}
    ] * 2
    pl.DataFrame(
        {
            "id": list("abcd"),
            "label": ["bad", "good", "good", "bad"],
            "label_probs": [json.dumps(p) for p in probs],
        }
    ).write_csv(tmp_path / "q.csv")
    with pytest.raises(
        LabelError,
        match=r"q.csv:label_probs`\['label'\] has probabilities outside \[0, 1\] on 1 row\(s\) \(ids: 'b'\)",
    ):
        evaluate_files(tmp_path / "g.csv", tmp_path / "q.csv", "bad")


def test_label_probs_rules(tmp_path):
    gold = pl.DataFrame({"id": list("abcd"), "label": ["bad", "good", "fair", "good"]})
    rows = [
        {"label": {"bad": 0.7, "fair": 0.2, "good": 0.1}},
        None,  # unparsed below: not read
        {"label": {"bad": 0.1, "fair": 0.6, "good": 0.3}},
        {"label": {"bad": 0.1, "fair": 0.1, "good": 0.8}},
    ]
    pred = pl.DataFrame(
        {
            "id": list("abcd"),
            "label": ["bad", None, "fair", "good"],
            "label_probs": [None if r is None else json.dumps(r) for r in rows],
            "parse_error": [None, "ParseError: x", None, None],
        }
    )
    comp = compare_tables("X", "fair", gold, pred, n_resamples=0)
    y = to_positive(gold["label"], "fair")
    # row b (gold good) is unparsed: it gets P(good) = 0, the opposite extreme
    assert comp.candidate.auc == pytest.approx(roc_auc_score(y, [0.1, 0.0, 0.3, 0.8]), abs=1e-12)
    # a *parsed* row without probabilities is an error naming it
    broken = pred.with_columns(
        pl.Series("label_probs", [rows[0] and json.dumps(rows[0]), None, None, json.dumps(rows[3])])
    )
    with pytest.raises(
        LabelError,
        match=r"`candidate:label_probs` has no probabilities for `label` on 1 parsed row\(s\) \(ids: 'c'\)",
    ):
        compare_tables("X", "fair", gold, broken, n_resamples=0)
    # a value the view does not know
    odd = pred.with_columns(pl.Series("label_probs", [json.dumps({"label": {"bad": 0.5, "meh": 0.5}})] * 4))
    with pytest.raises(LabelError, match=r"has value\(s\) \['meh'\] that view `fair` does not know"):
        compare_tables("X", "fair", gold, odd, n_resamples=0)
    # JSONL with nested objects (a struct column) reads the same as JSON text
    pred.with_columns(pl.Series("label_probs", rows)).write_ndjson(tmp_path / "p.jsonl")
    gold.write_csv(tmp_path / "g.csv")
    m = evaluate_files(tmp_path / "g.csv", tmp_path / "p.jsonl", "fair")
    assert m.auc == comp.candidate.auc


def test_secondary_fields_use_their_own_score_column():
    gold = pl.DataFrame(
        {"id": list("abcd"), "label": ["bad"] * 4, "location_label": ["bad", "good", "good", "bad"]}
    )
    pred = pl.DataFrame(
        {
            "id": list("abcd"),
            "label": ["bad"] * 4,
            "location_label": ["bad", "good", "bad", "good"],
            "score": [0.9, 0.1, 0.2, 0.8],  # the label field's: would give AUC 0
            "score_location_label": [0.1, 0.9, 0.6, 0.4],
        }
    )
    comp = compare_tables("X", "location", gold, pred, n_resamples=0)
    assert comp.candidate.auc == 1.0 and comp.extra["auc_source"] == {"candidate": "score_location_label"}
    with pytest.raises(
        AdNannyEvalError, match=r"`candidate:score` cannot be the AUC score of view `location`"
    ):
        compare_tables("X", "location", gold, pred, score_col="score", n_resamples=0)
