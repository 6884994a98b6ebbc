"""Table 6 metrics: formulas pinned with a deterministic encoder, then the real MiniLM on known orderings."""

from __future__ import annotations

import math
import os

import numpy as np
import polars as pl
import pytest

from adnanny_eval import AdNannyEvalError, minilm_model_dir, querygen_metrics, querygen_table
from adnanny_eval.lexical import BM25Index, tokenize
from adnanny_eval.querygen import (
    attributes,
    click_attribute_ratio,
    difficulty,
    distinct_n,
    diversity,
    relevance,
)


def table_encoder(vectors: dict[str, list[float]]):
    """A fixed lookup encoder: the formulas become hand-checkable."""

    def encode(texts):
        return np.array([vectors[t] for t in texts], dtype=float)

    return encode


def test_relevance_formula():
    enc = table_encoder({"q": [1, 0], "kw": [1, 0], "ad": [0.5, math.sqrt(3) / 2], "far": [-1, 0]})
    assert relevance(["q"], ["kw"], ["ad"], enc) == pytest.approx((1 + 0.5) / 2)
    assert relevance(["q"], ["kw"], None, enc) == pytest.approx(1.0)
    assert relevance(["far"], ["kw"], ["kw"], enc) == 0.0  # negative cosine clipped at 0


def test_diversity_formula():
    enc = table_encoder({"red shoes sale": [1, 0], "blue garden hose": [0, 1], "red shoes": [1, 0]})
    # orthogonal + all bigrams distinct -> (1 + 1) / 2
    assert diversity(["red shoes sale", "blue garden hose"], ["k", "k"], enc) == pytest.approx(1.0)
    # identical -> semantic 0, distinct-2 = 1/2
    assert diversity(["red shoes", "red shoes"], ["k", "k"], enc) == pytest.approx(0.25)
    # keywords with a single query are skipped; none left -> NaN
    assert math.isnan(diversity(["red shoes"], ["k"], enc))
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)
    # one-word queries have no bigram: the lexical half falls back to distinct-1 (here 2 of 3 words unique)
    enc1 = table_encoder({"shoes": [1, 0], "boots": [0, 1]})
    assert diversity(["shoes", "boots", "shoes"], ["k"] * 3, enc1) == pytest.approx(
        (1 - (2 * 0 + 2 * 0 + 2 * 1) / 6 + 2 / 3) / 2
    )


def test_bm25_and_difficulty():
    ads = ["red running shoes for men", "blue garden hose with nozzle"]
    index = BM25Index(ads)
    s = index.scores(["red shoes", "garden", "pizza"])
    assert s[0, 0] > 0 and s[0, 1] == 0 and s[1, 1] > s[1, 0] and (s[2] == 0).all()
    # mapped, failed (no overlap), failed (points at the other ad) -> 2/3
    assert difficulty(
        ["red shoes", "sneakers", "garden hose"], [ads[0]] * 3, ad_pool=[ads[1]]
    ) == pytest.approx(2 / 3)
    # a tie at the top is a failure: the matcher cannot decide
    assert difficulty(["shoes"], ["shoes a"], ad_pool=["shoes b"]) == 1.0
    with pytest.raises(AdNannyEvalError, match="at least 2 distinct ads"):
        difficulty(["x"], ["only ad"])
    assert tokenize("CLT Airport-Parking!") == ["clt", "airport", "parking"]


def test_click_attribute_ratio_formula():
    assert attributes("cheap parking near me") == ("location", "price")
    assert attributes("parking") == ("other",)
    gen = ["parking coupon", "parking nearby"]  # price 1/2, location 1/2
    clicks = ["parking coupon", "parking deal"]  # price 1
    assert click_attribute_ratio(gen, ["k", "k"], clicks, ["k", "k"]) == pytest.approx(0.5)
    assert click_attribute_ratio(clicks, ["k", "k"], clicks, ["k", "k"]) == pytest.approx(1.0)
    assert math.isnan(click_attribute_ratio(gen, ["k", "k"], clicks, ["other", "other"]))


def test_querygen_input_errors():
    enc = table_encoder({})
    with pytest.raises(AdNannyEvalError, match=r"need a `ad_text` column"):
        querygen_metrics(pl.DataFrame({"keyword": ["k"], "query": ["q"]}), enc)
    with pytest.raises(AdNannyEvalError, match=r"`keywords` has 1 entries but there are 2 queries"):
        relevance(["a", "b"], ["k"], None, enc)


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adnanny_eval import minilm_encoder

    return minilm_encoder()


def test_minilm_loads_offline_from_the_wheel(minilm):
    assert (minilm_model_dir() / "model.safetensors").is_file()
    e = minilm(["hello world"])
    assert e.shape == (1, 384) and np.linalg.norm(e[0]) == pytest.approx(1.0, abs=1e-5)


def test_minilm_relevance_orders_paraphrase_above_unrelated(minilm):
    kw, ad = "cheap flights to paris", "Low-cost airfare to Paris - book your flight today"
    para = relevance(["budget airline tickets to paris"], [kw], [ad], minilm)
    unrelated = relevance(["chocolate cake recipe"], [kw], [ad], minilm)
    assert para > unrelated + 0.3


def test_minilm_diversity_orders_varied_above_rephrased(minilm):
    same = ["cheap flights paris", "cheap flight to paris", "paris cheap flights"]
    varied = ["paris hotel deals near the louvre", "last minute flights to paris", "paris airport shuttle"]
    assert diversity(varied, ["k"] * 3, minilm) > diversity(same, ["k"] * 3, minilm) + 0.15


def test_table6_on_table7_queries(minilm):
    from adnanny_eval.demo import sample_querygen

    frame, clicks, pool = sample_querygen()
    rows, md = querygen_table(frame, minilm, clicks=clicks, ad_pool=pool)
    by = {r.model: r for r in rows}
    # Table 7's story: DeepSeek-R1 mirrors the keyword (less diverse, easy for a lexical matcher)
    assert by["AdNanny-671B"].diversity > by["DeepSeek-R1"].diversity
    assert by["AdNanny-7B"].difficulty > by["DeepSeek-R1"].difficulty
    assert all(0 <= r.relevance <= 1 and 0 <= r.click_attribute_ratio <= 1 for r in rows)
    assert md.startswith("| Model | Relevance | Diversity | Difficulty | Click Attr. Ratio |")
