"""Parse errors: `wrong` counts an unparsed row as a miss of its gold class, `drop` removes it on both sides."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from adnanny_eval import (
    AdNannyEvalError,
    ComparisonReport,
    LabelError,
    compare_tables,
    evaluate,
    paired_bootstrap_bacc,
    to_positive,
)
from adnanny_eval.cli import main
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

GOLD = ["bad", "good", "fair", "bad", "good", "good", "bad", "fair", "good", "bad"]
PRED = ["bad", None, "fair", None, "good", "bad", "bad", "good", None, "good"]
#        ok    unparsed ok   unparsed ok   ok     ok     ok     unparsed ok


def test_wrong_counts_unparsed_rows_as_misses_of_their_gold_class():
    y = to_positive(GOLD, "bad")
    unparsed = np.array([p is None for p in PRED])
    parsed = np.array([True if p is None else p != "bad" for p in PRED])
    want_pred = np.where(unparsed, ~y, parsed)  # the opposite of gold on every unparsed row
    m = evaluate(GOLD, PRED, "bad")
    assert m.bacc == pytest.approx(balanced_accuracy_score(y, want_pred), abs=1e-12)
    assert (
        m.n == 10 and m.n_parse_errors == 3 and m.n_dropped == 0 and m.parse_error_rate == pytest.approx(0.3)
    )
    # every unparsed row is an error, whichever class its gold is
    assert m.counts.tp + m.counts.tn == int((want_pred == y).sum()) == 5
    # Model DR depends on gold: the unparsed gold non-defects (rows 1 and 8) are counted as flagged
    assert m.model_dr == pytest.approx(float((~want_pred).mean()))


def test_drop_removes_unparsed_rows_and_reports_how_many():
    keep = [i for i, p in enumerate(PRED) if p is not None]
    y = to_positive([GOLD[i] for i in keep], "bad")
    p = to_positive([PRED[i] for i in keep], "bad")
    m = evaluate(GOLD, PRED, "bad", parse_errors="drop")
    assert m.bacc == pytest.approx(balanced_accuracy_score(y, p), abs=1e-12)
    assert (
        m.n == 7 and m.n_dropped == 3 and m.n_parse_errors == 3 and m.parse_error_rate == pytest.approx(0.3)
    )
    d = m.to_paper()
    assert d["n"] == 7 and d["n_dropped"] == 3 and d["parse_error_rate"] == pytest.approx(30.0)


def test_parse_error_column_marks_rows_even_with_a_label_and_unknown_labels_still_fail():
    gold = ["bad", "good", "good", "bad"]
    pred = ["bad", "garbled<", "good", "good"]
    flags = [None, "ParseError: no <Label> tag", None, None]
    m = evaluate(gold, pred, "bad", unparsed=[f is not None for f in flags])
    assert m.n_parse_errors == 1 and m.counts.fn == 1  # gold good, unparsed -> flagged
    with pytest.raises(LabelError, match=r"\['garbled<'\] that view `bad` does not know \(ids: 'b'\)"):
        evaluate(gold, pred, "bad", ids=["a", "b", "c", "d"])  # no parse_error: a wrong file, not a miss


def test_auc_under_wrong_gives_unparsed_rows_the_opposite_extreme_score():
    gold = ["bad", "good", "good", "bad", "good", "bad"]
    pred = ["bad", "good", None, "good", "good", None]
    score = [0.2, 0.9, np.nan, 0.7, 0.6, np.nan]
    y = to_positive(gold, "bad")
    imputed = np.array([0.2, 0.9, 0.0, 0.7, 0.6, 1.0])  # gold good -> 0, gold bad -> 1
    m = evaluate(gold, pred, "bad", score=score)
    assert m.auc == pytest.approx(roc_auc_score(y, imputed), abs=1e-12)
    m = evaluate(gold, pred, "bad", score=score, parse_errors="drop")
    keep = [0, 1, 3, 4]
    assert m.auc == pytest.approx(roc_auc_score(y[keep], imputed[keep]), abs=1e-12)
    with pytest.raises(
        LabelError, match=r"`score` is missing or not finite for 2 row\(s\) \(ids: 'c', 'f'\)"
    ):
        evaluate(gold, ["bad"] * 6, "bad", score=score, ids=list("abcdef"))  # a parsed row needs a score


def test_bad_mode_is_an_error():
    with pytest.raises(AdNannyEvalError, match=r"`parse_errors` must be one of wrong, drop, got 'skip'"):
        evaluate(["bad"], ["bad"], "bad", parse_errors="skip")


@pytest.fixture
def tables():
    rng = np.random.default_rng(5)
    n = 300
    ids = [f"r{i}" for i in range(n)]
    labels = np.array(["bad", "fair", "good"])
    gold = pl.DataFrame({"id": ids, "label": labels[rng.integers(0, 3, n)]})

    def preds(p_err: float, acc: float, seed: int) -> pl.DataFrame:
        r = np.random.default_rng(seed)
        lab = np.where(r.random(n) < acc, gold["label"].to_numpy(), labels[r.integers(0, 3, n)]).astype(
            object
        )
        err = r.random(n) < p_err
        lab[err] = None
        return pl.DataFrame(
            {"id": ids, "label": lab.tolist(), "parse_error": [("ParseError: x" if e else None) for e in err]}
        ).sample(fraction=1.0, shuffle=True, seed=seed)

    return gold, preds(0.15, 0.8, 1), preds(0.05, 0.6, 2)


def _aligned(gold, table):
    j = gold.join(table, on="id", how="left", suffix="_p")
    return (
        j["label"],
        j["label_p"],
        j["parse_error"].is_not_null().to_numpy() | j["label_p"].is_null().to_numpy(),
    )


def test_paired_comparison_drop_uses_the_same_ids_for_both_models(tables):
    gold, cand, base = tables
    comp = compare_tables("X", "fair", gold, cand, base, parse_errors="drop", n_resamples=500, seed=3)
    g, c, cu = _aligned(gold, cand)
    _, b, bu = _aligned(gold, base)
    keep = ~(cu | bu)
    y = to_positive(g.filter(keep), "fair")
    cp = to_positive(c.filter(keep), "fair")
    bp = to_positive(b.filter(keep), "fair")
    assert comp.candidate.n == comp.baseline.n == int(keep.sum())
    assert comp.candidate.n_dropped == comp.baseline.n_dropped == int((~keep).sum())
    assert comp.candidate.n_parse_errors == int(cu.sum()) and comp.baseline.n_parse_errors == int(bu.sum())
    assert comp.candidate.bacc == pytest.approx(balanced_accuracy_score(y, cp), abs=1e-12)
    assert comp.baseline.bacc == pytest.approx(balanced_accuracy_score(y, bp), abs=1e-12)
    assert comp.ci == paired_bootstrap_bacc(y, cp, bp, n_resamples=500, seed=3)


def test_paired_comparison_wrong_bootstraps_the_imputed_predictions(tables):
    gold, cand, base = tables
    comp = compare_tables("X", "bad", gold, cand, base, n_resamples=500, seed=4)
    g, c, cu = _aligned(gold, cand)
    _, b, bu = _aligned(gold, base)
    y = to_positive(g, "bad")
    cp = np.where(cu, ~y, to_positive(c.fill_null("bad"), "bad"))
    bp = np.where(bu, ~y, to_positive(b.fill_null("bad"), "bad"))
    assert comp.candidate.n == comp.baseline.n == gold.height and comp.candidate.n_dropped == 0
    assert comp.candidate.bacc == pytest.approx(balanced_accuracy_score(y, cp), abs=1e-12)
    assert comp.ci == paired_bootstrap_bacc(y, cp, bp, n_resamples=500, seed=4)
    md = ComparisonReport((comp,)).view_markdown("bad")
    assert (
        "| Parse err. |" in md
        and "Parse errors (`--parse-errors wrong`: each unparsed row counts as a miss" in md
    )
    assert f"candidate {int(cu.sum())} ({cu.mean() * 100:.2f}%)" in md
    frame = ComparisonReport((comp,)).to_frame()
    assert frame["n_parse_errors"].to_list() == [int(bu.sum()), int(cu.sum()), None]
    assert frame["parse_errors"].to_list() == ["wrong"] * 3
    entry = comp.to_dict()
    assert entry["candidate"]["parse_error_rate"] == pytest.approx(cu.mean() * 100)
    assert entry["parse_errors"] == "wrong"


def test_cli_reports_parse_errors_in_json_markdown_and_csv(tmp_path, capsys):
    pl.DataFrame({"id": list("abcdef"), "label": ["bad", "good", "fair", "bad", "good", "good"]}).write_csv(
        tmp_path / "g.csv"
    )
    pl.DataFrame(
        {
            "id": list("abcdef"),
            "label": ["bad", None, "fair", "good", None, "bad"],
            "parse_error": [None, "ParseError: no tag", None, None, "ParseError: no tag", None],
        }
    ).write_csv(tmp_path / "p.csv")
    base = ["report", "--gold", str(tmp_path / "g.csv"), "--pred", str(tmp_path / "p.csv"), "--view", "bad"]

    def run(*extra):
        status = main([*base, *extra])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)

    proc = run("--json", "--n-resamples", "0")
    assert proc.returncode == 0, proc.stderr  # no longer refused: unparsed rows count as misses
    obj = json.loads(proc.stdout)
    assert obj["n"] == 6 and obj["n_parse_errors"] == 2 and obj["parse_error_rate"] == pytest.approx(100 / 3)
    y = [False, True, True, False, True, True]
    p = [False, False, True, True, False, False]  # rows b, e (gold good, unparsed) -> flagged
    assert obj["BACC"] == pytest.approx(100 * balanced_accuracy_score(y, p))
    proc = run("--json", "--n-resamples", "0", "--parse-errors", "drop")
    obj = json.loads(proc.stdout)
    assert obj["n"] == 4 and obj["n_dropped"] == 2 and obj["parse_errors"] == "drop"
    assert (
        "dropped 2 row(s) whose prediction did not parse (--parse-errors drop); metrics cover 4"
        in proc.stderr
    )
    proc = run("--out", str(tmp_path / "r"), "--no-chart")
    assert "| Parse err. |" in proc.stdout and "Model DR/RR depends on gold" in proc.stdout
    frame = pl.read_csv(tmp_path / "r" / "report.csv")
    assert frame["parse_error_rate"].to_list() == [pytest.approx(100 / 3, abs=1e-3)]
    assert (
        json.loads((tmp_path / "r" / "report.json").read_text())["views"]["bad"][0]["parse_errors"] == "wrong"
    )
