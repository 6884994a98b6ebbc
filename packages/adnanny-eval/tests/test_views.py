"""Defect views: mapping, normalization, and errors that name the offending ids."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adnanny_eval import (
    AdNannyEvalError,
    LabelError,
    encode_labels,
    evaluate,
    get_view,
    normalize_label,
    to_positive,
)


def test_bad_and_fair_views_split_three_way_labels_differently():
    labels = ["bad", "fair", "good"]
    assert to_positive(labels, "bad").tolist() == [False, True, True]
    assert to_positive(labels, "fair").tolist() == [False, False, True]


def test_binary_and_ad_user_views():
    assert to_positive(["good", "bad"], "location").tolist() == [True, False]
    assert to_positive(["good", "bad"], "quality").tolist() == [True, False]
    assert to_positive([0, 1, 2, 3], "ad-user").tolist() == [False, True, True, True]
    assert to_positive(["Bad", "others", "3"], "ad-user").tolist() == [False, True, True]
    assert get_view("ad-user").rate_name == "RR" and get_view("bad").rate_name == "DR"
    assert get_view("AD_USER").name == "ad-user"


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        (" Bad ", "bad"),
        ("GOOD", "good"),
        ("\tfair\n", "fair"),
        (2.0, "2"),
        ("3.0", "3"),
        (1, "1"),
        (np.int64(0), "0"),
        (None, None),
        (float("nan"), None),
        (True, "true"),
    ],
)
def test_normalize_label(raw, norm):
    assert normalize_label(raw) == norm


def test_normalization_on_the_vectorized_path():
    raw = pl.Series(["bad", " BAD", "Fair ", "good", "GOOD", "fair"])
    assert to_positive(raw, "bad").tolist() == [False, False, True, True, True, True]
    assert to_positive(np.array([0.0, 1.0, 3.0]), "ad-user").tolist() == [False, True, True]


def test_one_encoding_serves_several_views():
    enc = encode_labels(pl.Series(["bad", "fair", "good", " Good"]))
    assert to_positive(enc, "bad").tolist() == [False, True, True, True]
    assert to_positive(enc, "fair").tolist() == [False, False, True, True]


def test_unknown_label_names_ids_and_known_labels():
    with pytest.raises(
        LabelError,
        match=r"\['excellent'\] that view `bad` does not know \(ids: 'q7', 'q9'\).*known labels: bad, fair, good",
    ):
        to_positive(["bad", "excellent", "good", "Excellent "], "bad", ids=["q1", "q7", "q8", "q9"])


def test_unknown_label_for_binary_view():
    with pytest.raises(LabelError, match=r"\['fair'\] that view `location`"):
        to_positive(["good", "fair"], "location", ids=["a", "b"])


def test_many_unknown_ids_are_truncated_with_count():
    with pytest.raises(LabelError, match=r"and 5 more"):
        to_positive(["x"] * 15, "bad", ids=[f"i{k}" for k in range(15)])


def test_missing_gold_label_is_an_error_naming_ids_but_a_missing_prediction_is_a_parse_error():
    with pytest.raises(LabelError, match=r"`gold label` is missing for 1 row\(s\) \(ids: 'b'\)"):
        evaluate(["bad", None], ["bad", "good"], "bad", ids=["a", "b"])
    m = evaluate(["bad", "good", "good"], ["bad", None, "good"], "bad", ids=["a", "b", "c"])
    assert m.n_parse_errors == 1 and m.counts.fn == 1  # gold good, unparsed -> flagged: a miss


def test_unknown_view():
    with pytest.raises(AdNannyEvalError, match=r"unknown `view` 'bogus'; choose one of bad, fair, location"):
        get_view("bogus")


def test_ids_length_mismatch():
    with pytest.raises(AdNannyEvalError, match=r"`ids` has 1 entries"):
        to_positive(["bad", "good"], "bad", ids=["a"])


def test_evaluate_end_to_end_from_raw_labels():
    m = evaluate(["bad", "bad", "fair", "good"], [" BAD", "good", "fair", "bad"], "bad")
    assert (m.counts.tp, m.counts.fn, m.counts.fp, m.counts.tn) == (1, 1, 1, 1)
    assert m.bacc == 0.5


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["bad", "fair", "good"]),
            st.lists(st.booleans(), min_size=4, max_size=4),
            st.sampled_from(["", " ", "\t", "  \n"]),
            st.sampled_from(["", " ", "\r\n"]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_any_casing_and_spacing_maps_like_the_canonical_label(items):
    canon = [label for label, *_ in items]
    messy = [
        pre + "".join(ch.upper() if up else ch for ch, up in zip(label, caps, strict=False)) + post
        for label, caps, pre, post in items
    ]
    for view in ("bad", "fair"):
        assert to_positive(messy, view).tolist() == to_positive(canon, view).tolist()
