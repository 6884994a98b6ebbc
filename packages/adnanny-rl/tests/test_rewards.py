"""Rewards: label agreement, retrieval with vs without injected queries (eq. 8), frozen CTR uplift."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from adnanny_cook.tasks import get_task
from adnanny_rl.errors import RewardError, RLConfigError
from adnanny_rl.rewards.base import RewardOutput, as_output
from adnanny_rl.rewards.ctr import CTRModel, CTRReward, CTRSettings
from adnanny_rl.rewards.labels import LabelReward
from adnanny_rl.rewards.retrieval import RetrievalReward


def _qa_text(label: str, loc: str = "Good", q: str = "Good") -> str:
    return f"<Label>{label}</Label><LocationLabel>{loc}</LocationLabel><AdQuality>{q}</AdQuality>"


def test_label_reward_agreement_and_format_penalty() -> None:
    spec = get_task("query_ad")
    r = LabelReward(spec, field_weights={"label": 2.0, "location_label": 1.0, "quality_label": 1.0},
                    format_penalty=-1.0, format_reward=0.1, mode="label")
    gold = {"labels": {"label": "fair", "location_label": "good", "quality_label": "bad"}}
    out = r([gold] * 3, [_qa_text("Fair", q="Bad"), _qa_text("Bad", q="Bad"), "Fair"], group_size=3)
    assert out.total == pytest.approx([0.1 + 1.0, 0.1 + 2 / 4, -1.0])
    assert out.components["parsed"] == [1.0, 1.0, 0.0]
    with pytest.raises(RLConfigError, match="not label fields"):
        LabelReward(spec, field_weights={"relevance": 1.0})
    with pytest.raises(RLConfigError, match="labeling task"):
        LabelReward(get_task("keyword_query"))


def test_label_reward_defect_view() -> None:
    """`agreement="defect"`: fair for good (both non-defects) agrees, fair for bad does not; every field of
    query_ad has defect values, so each is scored in its defect view. A task without any is refused."""
    spec = get_task("query_ad")
    r = LabelReward(spec, agreement="defect", mode="label")
    gold = [{"labels": {"label": g, "location_label": "good", "quality_label": "bad"}} for g in ("good", "bad")]
    out = r([gold[0], gold[0], gold[1], gold[1]],
            [_qa_text("Fair", q="Bad"), _qa_text("Bad", q="Bad"), _qa_text("Fair", q="Bad"), _qa_text("Bad", loc="Bad")],
            group_size=2)
    assert out.total == pytest.approx([1.0, 2 / 3, 2 / 3, 1 / 3])
    exact = LabelReward(spec, mode="label")([gold[0]], [_qa_text("Fair", q="Bad")], group_size=1)
    assert exact.total == pytest.approx([2 / 3])          # the same answer, scored exactly
    only_rel = LabelReward(spec, agreement="defect", field_weights={"label": 1.0})
    assert only_rel([gold[1]], [_qa_text("Good")], group_size=1).total == [0.0]
    with pytest.raises(RLConfigError, match="`agreement` = `defect`: no weighted field of `query_ad`"):
        LabelReward(dataclasses.replace(spec, defect_values={}), agreement="defect")


def test_as_output_refuses_wrong_length_and_nan() -> None:
    assert as_output([1, 2], 2, task="t").total == [1.0, 2.0]
    with pytest.raises(RewardError, match="task `t`.*3 values for 2"):
        as_output(RewardOutput(total=[1.0, 2.0, 3.0]), 2, task="t")
    with pytest.raises(RewardError, match="row 1"):
        as_output([0.0, float("nan")], 2, task="t")


ADS = {"a1": "acme trail running shoes", "a2": "city hotel downtown rooms", "a3": "garden hose reel"}
HELD = {"marathon sneakers": ["a1"], "place to stay center": ["a2"], "hose reel": ["a3"]}


def _kq(q: str) -> str:
    return f"<Query>{q}</Query>"


@pytest.mark.parametrize("metric", ["recall", "ndcg"])
def test_retrieval_reward_by_hand(metric: str) -> None:
    spec = get_task("keyword_query")
    rr = RetrievalReward(spec, ADS, HELD, k=1, metric=metric)
    # Base: "marathon sneakers" and "place to stay center" share no token with any ad -> miss at k=1.
    assert rr.metric({}, ["marathon sneakers", "place to stay center"]) == 0.0
    assert rr.metric({"a1": ["marathon sneakers"]}, ["marathon sneakers"]) == 1.0
    # 2 prompts (ads a1, a2) x G=2: completion 0 of each helps, completion 1 of each does not.
    rows = [{"ad_id": "a1"}, {"ad_id": "a1"}, {"ad_id": "a2"}, {"ad_id": "a2"}]
    comps = [_kq("marathon sneakers"), _kq("blue paint"), _kq("place to stay"), "not tagged"]
    out = rr(rows, comps, group_size=2)
    # batch 0 = {a1: marathon sneakers, a2: place to stay}: both held-out queries now hit -> +1.0
    # batch 1 = {a1: blue paint} (+ unparseable): nothing hits -> 0.0; the unparseable row also pays -0.1.
    assert out.components["metric_gain"] == pytest.approx([1.0, 0.0, 1.0, 0.0])
    assert out.total == pytest.approx([1.0, 0.0, 1.0, -0.1])
    assert out.components["parsed"] == [1.0, 1.0, 1.0, 0.0]


def test_retrieval_dense_with_a_toy_encoder() -> None:
    vocab = sorted({t for d in [*ADS.values(), *HELD] for t in d.split()} | {"sneakers"})

    def enc(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float(w in t.split()) + 1e-3 for w in vocab] for t in texts]).numpy()

    rr = RetrievalReward(get_task("keyword_query"), ADS, HELD, k=1, retriever="dense", encoder=enc)
    assert rr.metric({"a1": ["marathon sneakers"]}, ["marathon sneakers"]) == 1.0
    with pytest.raises(RLConfigError, match="not in the catalog"):
        RetrievalReward(get_task("keyword_query"), ADS, {"q": ["zz"]})


def _ctr_model() -> CTRModel:
    # Clicks follow overlap with the context and punish ALL CAPS creatives (as the sample world's logs do).
    ctx, ads, clicked = [], [], []
    for i in range(200):
        good = i % 2 == 0
        caps = i % 3 == 0
        text = "trail running shoes sale" if good else "garden hose reel"
        ctx.append("running shoes")
        ads.append(text.upper() if caps else text)
        clicked.append(good and not caps and i % 4 != 2 or (i % 50 == 1))
    return CTRModel.fit(ctx, ads, clicked, settings=CTRSettings(buckets=256, epochs=20))


def test_ctr_model_is_deterministic_and_round_trips(tmp_path) -> None:
    m1, m2 = _ctr_model(), _ctr_model()
    assert m1.param_hash() == m2.param_hash()
    p = m1.predict(["running shoes", "running shoes"], ["trail running shoes sale", "TRAIL RUNNING SHOES SALE"])
    assert p[0] > p[1] + 0.05                                          # caps hurt
    m3 = CTRModel.load(m1.save(tmp_path / "ctr"))
    assert m3.param_hash() == m1.param_hash() and m3.predict(["x"], ["y"]) == m1.predict(["x"], ["y"])
    (tmp_path / "ctr" / "ctr.json").write_text((tmp_path / "ctr" / "ctr.json").read_text().replace('"sha256": "',
                                                                                                '"sha256": "0'))
    with pytest.raises(RewardError, match="SHA-256"):
        CTRModel.load(tmp_path / "ctr")


def test_ctr_reward_uplift_guards_and_frozen() -> None:
    m = _ctr_model()
    before = m.weight.clone()
    spec = get_task("ad_rewrite")
    r = CTRReward(spec, m, min_similarity=0.3)
    row = {"ad_title": "TRAIL RUNNING SHOES", "ad_description": "SALE", "context": "running shoes"}
    fixed = "<Title>Trail running shoes</Title><Description>Sale</Description>"
    off_topic = "<Title>Luxury watches</Title><Description>Gold and silver</Description>"
    bloated = "<Title>Trail running shoes</Title><Description>" + "sale " * 40 + "</Description>"
    out = r([row] * 4, [fixed, off_topic, bloated, "garbage"], group_size=4)
    assert out.total[0] > 0.02                                        # fixing the caps raises predicted CTR
    assert out.components["guarded"] == [0.0, 1.0, 1.0, 1.0]
    assert out.total[1] == 0.0 and out.total[2] == 0.0 and out.total[3] == pytest.approx(-0.1)
    assert torch.equal(m.weight, before) and not m.weight.requires_grad
    m.weight.add_(1.0)                                                # a bug that moved the model is caught
    with pytest.raises(RewardError, match="parameters changed"):
        r([row], [fixed], group_size=1)


def test_retrieval_per_sample_term_by_hand() -> None:
    spec = get_task("keyword_query")
    rr = RetrievalReward(spec, ADS, HELD, k=1, sample_weight=0.5)
    rows = [{"ad_id": "a1"}, {"ad_id": "a1"}, {"ad_id": "a2"}, {"ad_id": "a2"}]
    # batch 0 = {a1: marathon sneakers, a2: blue paint}: only a1's query hits -> batch gain 1/2;
    # batch 1 = {a1: blue paint, a2: place to stay}: only a2's query hits -> 1/2.
    comps = [_kq("marathon sneakers"), _kq("blue paint"), _kq("blue paint"), _kq("place to stay")]
    out = rr(rows, comps, group_size=2)
    assert out.components["metric_gain"] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    # own ad alone: completions 0 and 3 lift their own ad's query from miss to hit (+1), 1 and 2 do nothing.
    assert out.components["own_gain"] == pytest.approx([1.0, 0.0, 0.0, 1.0])
    assert out.total == pytest.approx([0.5 + 0.5, 0.5, 0.5, 0.5 + 0.5])
    # batch_weight 0: the per-sample term alone (no batch gain computed), the format penalty still applies
    own_only = RetrievalReward(spec, ADS, HELD, k=1, sample_weight=0.5, batch_weight=0.0)(rows, comps, group_size=2)
    assert own_only.total == pytest.approx([0.5, 0.0, 0.0, 0.5])
    assert own_only.components["metric_gain"] == [0.0] * 4
    half = RetrievalReward(spec, ADS, HELD, k=1, sample_weight=0.5, batch_weight=0.5)(rows, comps, group_size=2)
    assert half.total == pytest.approx([0.25 + 0.5, 0.25, 0.25, 0.25 + 0.5])
    with pytest.raises(RLConfigError, match="one > 0"):
        RetrievalReward(spec, ADS, HELD, k=1, batch_weight=0.0)
    # the batch term alone cannot tell completion 0 from 1 in prompt a1's group; the per-sample term can
    assert "own_gain" not in RetrievalReward(spec, ADS, HELD, k=1)(rows, comps, group_size=2).components
    # M_base is memoised per query list (frozen catalog): the memo agrees with a fresh computation
    assert rr.base_metric(["hose reel"]) == rr.metric({}, ["hose reel"]) == 1.0
    assert rr.base_metric(["marathon sneakers"]) == 0.0


def test_retrieval_wrong_product_query_dilutes_its_ad() -> None:
    """doc2query under BM25, hand-worked with k=1 and ties broken by catalog order: a query about another product
    adds no matching term but lengthens its ad's document, so the ad falls behind an equally matching competitor
    (own term −1); a query with the ad's product and a held-out word lifts a trailing ad to rank 1 (own term +1)."""
    spec, held = get_task("keyword_query"), {"trail shoes sale": ["a1"]}
    # a1 first: rank 1 before injection; "garden hose" makes a1 longer -> a2 wins -> recall@1 1 -> 0
    first = RetrievalReward(spec, {"a1": "trail shoes", "a2": "trail shoes", "a3": "garden hose reel"}, held, k=1,
                            sample_weight=1.0)
    assert first.base_metric(["trail shoes sale"]) == 1.0
    out = first([{"ad_id": "a1"}] * 2, [_kq("garden hose"), _kq("shoes sale")], group_size=2)
    assert out.components["own_gain"] == pytest.approx([-1.0, 0.0])     # a query cannot raise a rank-1 ad
    # a2 first: a1 trails; "shoes sale" adds the held-out word "sale" -> a1 rank 1 -> 0 -> 1
    second = RetrievalReward(spec, {"a2": "trail shoes", "a1": "trail shoes", "a3": "garden hose reel"}, held, k=1,
                             sample_weight=1.0)
    assert second.base_metric(["trail shoes sale"]) == 0.0
    out = second([{"ad_id": "a1"}] * 2, [_kq("garden hose"), _kq("shoes sale")], group_size=2)
    assert out.components["own_gain"] == pytest.approx([0.0, 1.0])


def test_expandable_bm25_equals_a_fresh_bm25_index() -> None:
    """The reward's incremental BM25 is adnanny-eval's `BM25Index` over the expanded documents, number for number
    (lengths, average length, df and idf of injected terms, repeated terms, a term only an expansion brings)."""
    import random

    import numpy as np

    from adnanny_eval.lexical import BM25Index
    from adnanny_rl.rewards.retrieval import _ExpandableBM25

    rng = random.Random(0)
    words = "trail running shoes hotel city rooms garden hose reel sale cheap best near me budget".split()
    docs = [" ".join(rng.choices(words, k=rng.randint(2, 9))) for _ in range(40)]
    queries = [" ".join(rng.choices([*words, "zzz", "Sale!"], k=rng.randint(1, 5))) for _ in range(12)]
    bm = _ExpandableBM25(docs)
    for trial in range(20):
        exp = {j: [" ".join(rng.choices([*words, "newterm"], k=rng.randint(1, 6)))
                   for _ in range(rng.randint(1, 3))] for j in rng.sample(range(40), rng.randint(0, 5))}
        ref = BM25Index([d + "".join(" " + q for q in exp.get(j, ())) for j, d in enumerate(docs)]).scores(queries)
        np.testing.assert_allclose(bm.scores(exp, queries), ref, rtol=1e-12, atol=1e-12, err_msg=f"trial {trial}")
    assert bm.scores({}, ["newterm"]).tolist() == [[0.0] * 40]            # not in the base catalog
    assert bm.scores({3: ["newterm"]}, ["newterm"])[0, 3] > 0
