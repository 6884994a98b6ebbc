"""Decision thresholds on P(non-defect) and the collapse check, on hand-made score lists."""

from __future__ import annotations

import warnings

import pytest

from adnanny_sft.calibration import (CollapseWarning, bacc_at, calibrate_threshold, class_distribution,
                                     collapse_message, warn_if_collapsed)
from adnanny_sft.errors import DataError

# defect iff score < t.  Sorted scores with their gold side (D = defect):
#   0.05 D, 0.10 D, 0.20 ok, 0.30 D, 0.40 D, 0.55 ok, 0.60 D, 0.80 ok, 0.90 ok, 0.95 ok
SCORES = [0.40, 0.90, 0.05, 0.55, 0.30, 0.95, 0.10, 0.60, 0.80, 0.20]
DEFECT = [True, False, True, False, True, False, True, True, False, False]
MD_SCORES = [0.5, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4]
MD_DEFECT = [True, True, False, False, False, True, False, False]


def _brute_force_best(scores, defect):
    cands = sorted(set(scores))
    cuts = [cands[0] - 1e-6] + [(a + b) / 2 for a, b in zip(cands, cands[1:])] + [cands[-1] + 1e-6]
    return max(bacc_at(scores, defect, t) for t in cuts)


def test_max_bacc_finds_the_bacc_maximising_threshold() -> None:
    th = calibrate_threshold(SCORES, DEFECT, "max_bacc")
    # two cuts reach the best BACC 0.8: 0.475 (defects 4/5, non-defects 4/5) and 0.70 (5/5, 3/5); the tie goes
    # to the one whose predicted defect rate (0.5) is closest to the gold rate (0.5)
    assert th.bacc == pytest.approx(0.8) == pytest.approx(_brute_force_best(SCORES, DEFECT))
    assert th.value == pytest.approx(0.475)
    assert bacc_at(SCORES, DEFECT, th.value) == pytest.approx(th.bacc)
    assert th.gold_defect_rate == pytest.approx(0.5) and th.pred_defect_rate == pytest.approx(0.5)
    assert th.method == "max_bacc" and th.n == 10
    # a unique optimum: sorted 0.1D 0.2D 0.3 0.4 0.5D 0.6 0.7 0.8 -> cut 0.25 gives (2/3 + 5/5) / 2
    th2 = calibrate_threshold(MD_SCORES, MD_DEFECT, "max_bacc")
    assert th2.value == pytest.approx(0.25) and th2.bacc == pytest.approx((2 / 3 + 1) / 2)
    assert th2.bacc == pytest.approx(_brute_force_best(MD_SCORES, MD_DEFECT))


def test_max_bacc_beats_the_argmax_threshold_on_a_shifted_model() -> None:
    # every score is above 0.5 (a model that says "non-defect" for all rows) but the ranking is perfect
    scores = [0.51, 0.52, 0.53, 0.80, 0.85, 0.90]
    defect = [True, True, True, False, False, False]
    assert bacc_at(scores, defect, 0.5) == pytest.approx(0.5)
    th = calibrate_threshold(scores, defect)
    assert th.bacc == pytest.approx(1.0) and 0.53 < th.value < 0.80


def test_match_dr_matches_the_gold_defect_rate() -> None:
    th = calibrate_threshold(MD_SCORES, MD_DEFECT, "match_dr")
    assert th.gold_defect_rate == pytest.approx(3 / 8)
    assert th.pred_defect_rate == pytest.approx(3 / 8)  # 3 of 8 predicted defects, like the gold
    assert th.value == pytest.approx(0.35)
    assert th.bacc == pytest.approx(bacc_at(MD_SCORES, MD_DEFECT, th.value)) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # it trades BACC for the rate: max_bacc's cut (0.25) predicts only 2 defects
    assert calibrate_threshold(MD_SCORES, MD_DEFECT, "max_bacc").pred_defect_rate == pytest.approx(0.25)


def test_calibration_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="both defect and non-defect"):
        calibrate_threshold([0.1, 0.2], [True, True])
    with pytest.raises(DataError, match="one score per gold label"):
        calibrate_threshold([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(DataError, match="must be one of"):
        calibrate_threshold(SCORES, DEFECT, "youden")
    with pytest.raises(DataError, match="finite"):
        calibrate_threshold([0.1, float("nan")], [True, False])


def test_collapse_warning_fires_on_one_class() -> None:
    preds = ["bad"] * 19 + ["good"]  # 95% one class
    msg = collapse_message(preds)
    assert msg is not None and "95%" in msg and "'bad'" in msg
    with pytest.warns(CollapseWarning, match="collapsed onto one class"):
        assert warn_if_collapsed(preds, what="step 7") is not None
    assert class_distribution(preds) == {"bad": 0.95, "good": 0.05}
    # unparsed outputs are a class of their own: a model that never answers has collapsed too
    assert collapse_message([None] * 10) is not None and "<unparsed>" in collapse_message([None] * 10)


def test_no_collapse_warning_on_a_mixed_prediction_list() -> None:
    preds = ["bad"] * 9 + ["fair"] * 1  # exactly 90% is not more than the 0.9 limit
    assert collapse_message(preds) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_collapsed(["bad", "fair", "good"] * 5) is None
    assert collapse_message(preds, limit=0.8) is not None
    with pytest.raises(DataError, match="collapse limit"):
        collapse_message(preds, limit=0.0)
