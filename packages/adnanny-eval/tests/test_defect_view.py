"""The generic defect view: any task's label field, string or integer values, and the built-in views as cases."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from adnanny_eval import (
    AdNannyEvalError,
    LabelError,
    compare_tables,
    defect_view,
    evaluate,
    get_view,
    to_positive,
)
from adnanny_eval.cli import main
from sklearn.metrics import balanced_accuracy_score

# Each built-in view as the generic view of its defect values (and its value set, so typos still fail).
BUILTIN_AS_GENERIC = {
    "bad": {"defect": ("bad",), "values": ("bad", "fair", "good")},
    "fair": {"defect": ("bad", "fair"), "values": ("bad", "fair", "good")},
    "location": {"defect": ("bad",), "values": ("bad", "good"), "field": "location_label"},
    "quality": {"defect": ("bad",), "values": ("bad", "good"), "field": "quality_label"},
    "ad-user": {
        "defect": (0, "bad"),
        "values": (0, 1, 2, 3, "bad", "fair", "good", "other", "others"),
        "rate_name": "RR",
    },
}
LABELS = {
    "bad": ["bad", "fair", "good", " Fair"],
    "fair": ["bad", "fair", "good", "GOOD "],
    "location": ["bad", "good"],
    "quality": ["bad", "good"],
    "ad-user": [0, 1, 2, 3, "2.0", "Bad", "others"],
}


def _bacc_sklearn(y, p):
    return balanced_accuracy_score(np.asarray(y, bool), np.asarray(p, bool))


@pytest.mark.parametrize("name", list(BUILTIN_AS_GENERIC))
def test_builtin_views_are_the_generic_view_of_their_defect_values(name):
    rng = np.random.default_rng(len(name))
    pool = LABELS[name]
    gold = [pool[i] for i in rng.integers(0, len(pool), 200)]
    pred = [pool[i] for i in rng.integers(0, len(pool), 200)]
    builtin = get_view(name)
    kw = BUILTIN_AS_GENERIC[name]
    closed = defect_view(**kw)
    opened = get_view("defect", defect=kw["defect"], field=kw.get("field"), rate_name=kw.get("rate_name"))
    assert closed.field == opened.field == builtin.field and closed.rate_name == builtin.rate_name
    assert closed.negative == builtin.negative and closed.positive == builtin.positive
    ref = to_positive(gold, builtin)
    assert to_positive(gold, closed).tolist() == ref.tolist() == to_positive(gold, opened).tolist()
    m_builtin = evaluate(gold, pred, name)
    for v in (closed, opened):
        m = evaluate(gold, pred, v)
        assert m.counts == m_builtin.counts and m.bacc == m_builtin.bacc
    assert m_builtin.bacc == pytest.approx(_bacc_sklearn(ref, to_positive(pred, builtin)), abs=1e-12)


def test_generic_view_on_integer_scores_matches_sklearn():
    # ad-user style 0-3 scores, defect = 0; also written as text and as floats (CSV readers do that)
    gold = [0, 1, 2, 3, 0, 0, 2, 1, 3, 0]
    pred = [0, 0, 2, 3, 1, 0, 3, 1, 0, 2]
    y = [g != 0 for g in gold]
    p = [q != 0 for q in pred]
    want = _bacc_sklearn(y, p)
    for defect in ((0,), ("0",), "0", (0.0,)):
        m = evaluate(gold, pred, "defect", defect=defect)
        assert m.bacc == pytest.approx(want, abs=1e-12)
    m = evaluate([str(g) for g in gold], [float(q) for q in pred], "defect", defect="0", rate_name="RR")
    assert m.bacc == pytest.approx(want, abs=1e-12) and m.to_paper("RR")["RR"] == pytest.approx(40.0)


def test_generic_view_of_a_users_own_task():
    # a task of one's own: relevance grades E/S/C/I with I (irrelevant) and C (complement) as defects
    gold = ["E", "S", "C", "I", "E", "I", "S", "C"]
    pred = ["E", "C", "C", "E", "S", "I", "I", "S"]
    v = get_view("defect", defect="c,i", field="esci")
    assert v.name == "defect:c,i@esci" and v.field == "esci" and v.other_positive
    y = [g in "CI" for g in gold]
    p = [q in "CI" for q in pred]
    m = evaluate(gold, pred, v)
    assert m.bacc == pytest.approx(_bacc_sklearn(np.logical_not(y), np.logical_not(p)), abs=1e-12)
    # without `values` every other label is a non-defect; with `values` an unknown one is an error
    assert to_positive(["e", "x"], v).tolist() == [True, True]
    closed = defect_view("C,I", field="esci", values="E,S,C,I")
    with pytest.raises(
        LabelError, match=r"\['x'\] that view `defect:c,i@esci` does not know.*known labels: c, e, i, s"
    ):
        to_positive(["e", "x"], closed)


def test_generic_view_errors():
    with pytest.raises(AdNannyEvalError, match=r"view `defect` needs its defect values.*--defect bad,fair"):
        get_view("defect")
    with pytest.raises(
        AdNannyEvalError, match=r"go with view `defect`; the built-in view `fair` has its own"
    ):
        get_view("fair", defect=("bad",))
    with pytest.raises(AdNannyEvalError, match=r"defect value\(s\) \['meh'\] are not among `values`"):
        defect_view("bad,meh", values="bad,fair,good")
    with pytest.raises(AdNannyEvalError, match=r"has no non-defect label"):
        defect_view("bad,good", values="bad,good")
    with pytest.raises(AdNannyEvalError, match=r"`defect` has an empty value"):
        defect_view("bad,,fair")
    with pytest.raises(AdNannyEvalError, match=r"`defect` is empty"):
        defect_view(())


def test_field_picks_the_label_columns_of_compare_tables():
    gold = pl.DataFrame({"id": ["a", "b", "c", "d"], "relevance": ["bad", "good", "fair", "good"]})
    pred = pl.DataFrame({"id": ["a", "b", "c", "d"], "relevance": ["bad", "fair", "bad", "good"]})
    comp = compare_tables("X", "defect", gold, pred, defect="bad,fair", field="relevance", n_resamples=0)
    y, p = [False, True, False, True], [False, False, False, True]
    assert comp.candidate.bacc == pytest.approx(_bacc_sklearn(y, p), abs=1e-12)
    assert comp.view.name == "defect:bad,fair@relevance"
    # a built-in view can read another field too
    assert (
        compare_tables("X", "fair", gold, pred, field="relevance", n_resamples=0).candidate == comp.candidate
    )


def test_cli_defect_view_agrees_with_builtin_views(tmp_path, capsys):
    def _cli(*args):
        status = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=status, stdout=out.out, stderr=out.err)

    rng = np.random.default_rng(3)
    n = 120
    labels = np.array(["bad", "fair", "good"])
    ids = [f"r{i}" for i in range(n)]
    pl.DataFrame(
        {"id": ids, "label": labels[rng.integers(0, 3, n)], "grade": rng.integers(0, 4, n)}
    ).write_csv(tmp_path / "g.csv")
    pl.DataFrame(
        {"id": ids, "label": labels[rng.integers(0, 3, n)], "grade": rng.integers(0, 4, n)}
    ).write_csv(tmp_path / "p.csv")
    base = ["report", "--gold", str(tmp_path / "g.csv"), "--pred", str(tmp_path / "p.csv"), "--json"]
    fair = json.loads(_cli(*base, "--view", "fair").stdout)
    proc = _cli(*base, "--view", "defect", "--defect", "bad,fair")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == fair
    adu = json.loads(_cli(*base, "--view", "ad-user", "--gold-col", "grade", "--pred-col", "grade").stdout)
    gen = json.loads(
        _cli(*base, "--view", "defect", "--defect", "0", "--field", "grade", "--rate-name", "RR").stdout
    )
    assert gen == adu and "RR" in gen
    md = _cli(
        *base[:-1], "--view", "defect", "--defect", "0", "--field", "grade", "--n-resamples", "0"
    ).stdout
    assert md.startswith("### Defect view `grade`: defect = 0; non-defect = every other label")
    proc = _cli(*base, "--view", "defect")
    assert proc.returncode == 2 and "view `defect` needs its defect values" in proc.stderr
