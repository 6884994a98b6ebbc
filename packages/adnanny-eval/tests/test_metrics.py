"""Metrics equal scikit-learn on random data; degenerate cases give NaN + a warning, never a crash or 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from adnanny_eval import AdNannyEvalError, DegenerateMetricWarning, balanced_accuracy, binary_metrics, roc_auc
from adnanny_eval.metrics import bacc_from_counts, confusion_counts

TOL = 1e-9


@st.composite
def labelled(draw, with_score: bool = True):
    n = draw(st.integers(min_value=2, max_value=300))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = np.random.default_rng(seed)
    y = rng.random(n) < draw(st.floats(0.05, 0.95))
    y[0], y[1] = True, False  # both gold classes present
    p = rng.random(n) < draw(st.floats(0.05, 0.95))
    p[0], p[1] = True, False  # both predicted classes present
    decimals = draw(st.integers(0, 6))  # few decimals -> many ties
    score = np.round(rng.random(n), decimals)
    return y, p, score


@settings(max_examples=100, deadline=None)
@given(labelled())
def test_matches_sklearn_on_random_data(data):
    y, p, score = data
    m = binary_metrics(y, p, score)
    prec, rec, f1, _ = precision_recall_fscore_support(y, p, labels=[True, False], zero_division=np.nan)
    assert abs(m.bacc - balanced_accuracy_score(y, p)) < TOL
    assert abs(m.acc - accuracy_score(y, p)) < TOL
    assert abs(m.pos_acc - rec[0]) < TOL and abs(m.neg_acc - rec[1]) < TOL
    assert abs(m.pos_prec - prec[0]) < TOL and abs(m.neg_prec - prec[1]) < TOL
    assert abs(m.pos_f1 - f1[0]) < TOL and abs(m.neg_f1 - f1[1]) < TOL
    assert abs(m.auc - roc_auc_score(y, score)) < TOL
    assert abs(m.dr - np.mean(~y)) < TOL and abs(m.model_dr - np.mean(~p)) < TOL


@settings(max_examples=60, deadline=None)
@given(labelled())
def test_auc_general_scores_path_matches_sklearn(data):
    # scores outside [0, 2) take the argsort path; same answer, ties included
    y, _, score = data
    assert abs(roc_auc(y, score * 7.0 - 3.0) - roc_auc_score(y, score)) < TOL
    assert abs(roc_auc(y, score) - roc_auc_score(y, score)) < TOL


def test_auc_all_tied_is_half_and_perfect_is_one():
    y = np.array([True, False, True, False])
    assert roc_auc(y, np.full(4, 0.3)) == 0.5
    assert roc_auc(y, np.array([0.9, 0.1, 0.8, 0.2])) == 1.0
    assert roc_auc(y, np.array([0.1, 0.9, 0.2, 0.8])) == 0.0
    assert roc_auc(y, np.array([0.0, -0.0, 0.0, 0.0])) == 0.5  # -0.0 ties with 0.0


def test_paper_table1_arithmetic_positive_is_non_defect():
    # Table 1, Dataset A, 4o-1120: Acc = p*PosAcc + (1-p)*NegAcc with p = 1 - DR  (positive = non-defect)
    n_pos, n_neg = 4338, 5662  # DR 56.62
    tp, tn = 3161, 4509  # PosAcc ~72.87, NegAcc ~79.63
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    p = np.r_[np.ones(tp, bool), np.zeros(n_pos - tp, bool), np.zeros(tn, bool), np.ones(n_neg - tn, bool)]
    m = binary_metrics(y, p)
    assert round(m.dr * 100, 2) == 56.62
    assert round(m.pos_acc * 100, 2) == 72.87 and round(m.neg_acc * 100, 2) == 79.64
    assert round(m.acc * 100, 2) == 76.70


def _only(record, names):
    undefined = {
        k for k, v in record.to_paper(percent=False).items() if isinstance(v, float) and math.isnan(v)
    }
    assert undefined == set(names), undefined


def test_no_defects_in_gold():
    y = np.ones(5, bool)
    p = np.array([True, True, False, True, True])
    with pytest.warns(DegenerateMetricWarning, match="no gold defects"):
        m = binary_metrics(y, p, np.linspace(0, 1, 5))
    _only(m, {"NegAcc", "BACC", "NegPrec", "AUC"} - {"NegPrec"})
    assert m.neg_prec == 0.0  # one flagged row, wrong: defined and 0
    assert m.neg_f1 == 0.0 and m.pos_acc == 0.8


def test_nothing_flagged():
    y = np.array([True, False, True, False])
    p = np.ones(4, bool)
    with pytest.warns(DegenerateMetricWarning, match="nothing flagged"):
        m = binary_metrics(y, p)
    _only(m, {"NegPrec"})
    assert m.neg_acc == 0.0 and m.neg_f1 == 0.0 and m.bacc == 0.5 and m.model_dr == 0.0


def test_everything_flagged_and_all_defects():
    y = np.zeros(3, bool)
    p = np.zeros(3, bool)
    with pytest.warns(DegenerateMetricWarning, match="no gold non-defects"):
        m = binary_metrics(y, p, np.array([0.1, 0.2, 0.3]))
    _only(m, {"PosAcc", "PosPrec", "PosF1", "BACC", "AUC"})
    assert m.neg_acc == 1.0 and m.acc == 1.0 and m.dr == 1.0


def test_everything_flagged_with_both_gold_classes():
    y = np.array([True, False, True, False])
    p = np.zeros(4, bool)
    with pytest.warns(DegenerateMetricWarning, match="PosPrec undefined.*everything flagged as defect"):
        m = binary_metrics(y, p)
    _only(m, {"PosPrec"})
    assert m.pos_acc == 0.0 and m.neg_acc == 1.0 and m.bacc == 0.5 and m.model_dr == 1.0 and m.pos_f1 == 0.0


def test_empty_input_all_nan_with_warning():
    with pytest.warns(DegenerateMetricWarning, match="no rows"):
        m = binary_metrics(np.array([], bool), np.array([], bool))
    assert m.n == 0 and math.isnan(m.acc) and math.isnan(m.dr)


def test_balanced_accuracy_one_class_is_nan_not_sklearn_partial_mean():
    with pytest.warns(DegenerateMetricWarning):
        assert math.isnan(balanced_accuracy(np.ones(4, bool), np.array([1, 0, 1, 1], bool)))


def test_auc_one_class_warns():
    with pytest.warns(DegenerateMetricWarning, match="AUC undefined"):
        assert math.isnan(roc_auc(np.ones(3, bool), np.array([0.1, 0.5, 0.9])))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(AdNannyEvalError, match=r"`y_pred` must be boolean"):
        confusion_counts(np.array([True]), np.array(["bad"]))
    with pytest.raises(AdNannyEvalError, match=r"0/1 or booleans"):
        confusion_counts(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(AdNannyEvalError, match=r"has 2 rows but `y_pred` has 3"):
        confusion_counts(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(AdNannyEvalError, match=r"`score` has 1 missing or non-finite"):
        roc_auc(np.array([True, False]), np.array([0.2, np.nan]))


def test_counts_and_vectorized_bacc_agree():
    rng = np.random.default_rng(3)
    y, p = rng.random(1000) < 0.4, rng.random(1000) < 0.5
    c = confusion_counts(y, p)
    assert c.n == 1000 and c.tp == int((y & p).sum()) and c.tn == int((~y & ~p).sum())
    assert abs(bacc_from_counts(c.tp, c.fn, c.fp, c.tn) - balanced_accuracy_score(y, p)) < TOL
    assert np.isnan(bacc_from_counts([1], [0], [0], [0])[0])


def test_to_paper_keys_and_percent():
    m = binary_metrics(
        np.array([1, 0, 1, 0], bool), np.array([1, 0, 0, 0], bool), np.array([0.9, 0.1, 0.4, 0.3])
    )
    d = m.to_paper("RR")
    assert list(d) == [
        "RR",
        "Model RR",
        "BACC",
        "Acc",
        "PosAcc",
        "PosPrec",
        "NegAcc",
        "NegPrec",
        "PosF1",
        "NegF1",
        "AUC",
        "n",
        "n_defect",
        "n_parse_errors",
        "parse_error_rate",
        "n_dropped",
    ]
    assert d["n_parse_errors"] == 0 and d["parse_error_rate"] == 0.0 and d["n_dropped"] == 0
    assert d["BACC"] == 75.0 and d["n"] == 4 and d["n_defect"] == 2 and d["AUC"] == 100.0
