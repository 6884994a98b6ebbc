"""The lexical and popularity/genre baselines: hand-checked features, learning, determinism, errors."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

from adnanny_eval import AdNannyEvalError, balanced_accuracy, evaluate, paired_bootstrap_bacc  # noqa: E402
from adnanny_eval.baselines import (  # noqa: E402
    LEXICAL_FEATURES,
    BalancedLogisticRegression,
    LexicalBaseline,
    LogRegConfig,
    PopularityGenreBaseline,
    PopularityTable,
    TfidfModel,
    genre_features,
    predictions_frame,
    token_overlap,
)

TOPICS = {
    "wine": "red wine bottle vineyard merlot cabernet",
    "hotel": "hotel room suite resort booking stay",
    "shoes": "running shoes sneakers trail jogging cushioned",
    "card": "credit card cash back rewards visa",
    "tax": "tax preparation filing return refund accountant",
    "phone": "smartphone phone case charger android screen",
    "piano": "piano lessons keyboard music teacher beginner",
    "car": "car rental suv sedan airport pickup",
}


def lexical_world(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Query/ad pairs: non-defect ads share the query's topic words, defects come from another topic;
    10% of labels are flipped, so a perfect score is impossible."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    left, right, y = [], [], []
    for _ in range(n):
        topic = rng.choice(names)
        words = TOPICS[topic].split()
        query = " ".join(rng.sample(words, 2))
        good = rng.random() < 0.6
        ad_topic = topic if good else rng.choice([t for t in names if t != topic])
        ad_words = TOPICS[ad_topic].split()
        ad = " ".join(rng.sample(ad_words, 4)) + " best deals"
        if rng.random() < 0.1:
            good = not good
        left.append(query)
        right.append(ad)
        y.append(good)
    return left, right, np.array(y)


def test_features_equal_hand_values_on_two_rows():
    left = ["red wine", "Cheap HOTEL"]
    right = ["red wine bottle", "running shoes"]
    base = LexicalBaseline().fit(left, right, np.array([True, False]))
    feats = base.features(left, right)
    # TF-IDF over the 4 training texts: idf = ln((1 + 4) / (1 + df)) + 1; red/wine df=2, bottle df=1.
    a = math.log(5 / 3) + 1
    b = math.log(5 / 2) + 1
    cos1 = (a * a + a * a) / (math.sqrt(2 * a * a) * math.sqrt(2 * a * a + b * b))
    expected = np.array([[cos1, 2 / 3, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(feats, expected, rtol=1e-12, atol=1e-12)
    assert base.feature_names == LEXICAL_FEATURES
    # unseen words carry no weight; a text with no tokens has zero coverage, not a division error
    np.testing.assert_allclose(base.features(["zebra wine", ""], ["wine", "wine"]), [[1.0, 0.5, 0.5], [0, 0, 0]])


def test_token_overlap_uses_the_shared_tokenizer():
    ov = token_overlap(["airport-parking CLT", "", "a b"], ["CLT airport parking!", "", "c"])
    np.testing.assert_allclose(ov, [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])


def test_lexical_baseline_beats_chance_clearly():
    left, right, y = lexical_world(600, seed=1)
    tl, tr, ty = lexical_world(400, seed=2)
    base = LexicalBaseline().fit(left, right, y)
    pred = base.predict(tl, tr)
    bacc = balanced_accuracy(ty, pred)
    ci = paired_bootstrap_bacc(ty, pred, n_resamples=500, seed=0)
    assert bacc > 0.8, bacc  # 10% label noise caps it near 0.9
    assert ci.candidate[0] > 0.75
    # the overlap features carry the signal: their weights are positive (more overlap -> non-defect)
    coef = base.model.coefficients()
    assert coef["tfidf_cosine"] + coef["jaccard"] + coef["coverage"] > 0
    # the score is a probability and orders rows: AUC well above chance
    score = base.predict_proba(tl, tr)
    assert ((score >= 0) & (score <= 1)).all()
    m = evaluate(np.where(ty, "good", "bad"), np.where(pred, "good", "bad"), "bad", score=score)
    assert m.auc > 0.85


def test_predictions_are_deterministic():
    left, right, y = lexical_world(300, seed=3)
    tl, tr, _ = lexical_world(100, seed=4)
    p1 = LexicalBaseline(LogRegConfig(seed=0)).fit(left, right, y).predict_proba(tl, tr)
    p2 = LexicalBaseline(LogRegConfig(seed=0)).fit(left, right, y).predict_proba(tl, tr)
    assert np.array_equal(p1, p2)  # bit-identical


def test_class_balancing_keeps_the_minority_class():
    # 90% non-defect: an unweighted model at threshold 0.5 would favour the majority; balanced keeps
    # defect recall near non-defect recall.
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.random(n) < 0.9
    x = (y.astype(float) + rng.normal(0, 0.8, n))[:, None]
    clf = BalancedLogisticRegression(feature_names=("x",)).fit(x, y)
    pred = clf.predict(x)
    neg_acc = (~pred[~y]).mean()
    pos_acc = pred[y].mean()
    assert abs(neg_acc - pos_acc) < 0.1 and neg_acc > 0.6


def test_popularity_table_and_genre_features_hand_values():
    pop = PopularityTable.fit(["m1", "m1", "m2"], [4.0, 5.0, 1.0], prior_weight=1.0)
    assert pop.global_mean == pytest.approx(10 / 3)
    assert pop.log_popularity("m1") == pytest.approx(math.log(3))
    assert pop.log_popularity("unseen") == 0.0
    assert pop.mean("m1") == pytest.approx((9 + 10 / 3) / 3)
    assert pop.mean("unseen") == pytest.approx(10 / 3)
    feats = genre_features(
        [{"Comedy", "Drama"}, {"Horror"}],
        [[{"comedy"}, {"Action"}], [{"Comedy"}]],
        [[4.0, 2.0], [3.0]],
        default_rating=3.5,
    )
    # row 0: item {comedy, drama} vs history union {comedy, action}: jaccard 1/3, 1 of 2 items shares a genre
    np.testing.assert_allclose(feats, [[1 / 3, 0.5, 3.0, 4.0], [0.0, 0.0, 3.0, 3.0]])
    no_ratings = genre_features([{"a"}], [[]], None, default_rating=3.5)
    np.testing.assert_allclose(no_ratings, [[0.0, 0.0, 3.5, 3.5]])


def test_popularity_genre_baseline_learns_quality_and_taste():
    rng = random.Random(0)
    genres = ["action", "comedy", "drama", "horror"]
    quality = {f"m{i}": rng.gauss(0, 1) for i in range(60)}
    item_genre = {m: {genres[i % 4]} for i, m in enumerate(quality)}
    train_items = [m for m in quality for _ in range(1 + int(5 * (quality[m] > 0)))]
    train_ratings = [3.0 + quality[m] for m in train_items]
    pop = PopularityTable.fit(train_items, train_ratings)

    def rows(n, seed):
        r = random.Random(seed)
        out = ([], [], [], [], [])
        for _ in range(n):
            fav = r.choice(genres)
            hist = [{fav} if r.random() < 0.8 else {r.choice(genres)} for _ in range(5)]
            item = r.choice(sorted(quality))
            like = quality[item] + (1.0 if item_genre[item] & {fav} else -0.5) + r.gauss(0, 0.5)
            for col, v in zip(out, (item, item_genre[item], hist, [4.0] * 5, like > 0), strict=True):
                col.append(v)
        return out

    items, ig, hg, hr, y = rows(800, 1)
    base = PopularityGenreBaseline(pop).fit(items, ig, hg, hr, np.array(y))
    ti, tig, thg, thr, ty = rows(400, 2)
    pred = base.predict(ti, tig, thg, thr)
    assert balanced_accuracy(np.array(ty), pred) > 0.75
    again = PopularityGenreBaseline(pop).fit(items, ig, hg, hr, np.array(y)).predict_proba(ti, tig, thg, thr)
    assert np.array_equal(again, base.predict_proba(ti, tig, thg, thr))


def test_predictions_frame_matches_the_contract():
    df = predictions_frame(["a", 2], [0.2, 0.7], defect_label="bad", non_defect_label="good")
    assert df.columns == ["id", "label", "score"]
    assert df["id"].to_list() == ["a", "2"] and df["label"].to_list() == ["bad", "good"]
    with pytest.raises(AdNannyEvalError, match=r"`score` must have one entry per id \(2\)"):
        predictions_frame(["a", "b"], [0.1], defect_label="bad", non_defect_label="good")


def test_errors_name_what_is_wrong():
    base = LexicalBaseline()
    with pytest.raises(AdNannyEvalError, match="not fitted yet"):
        base.predict(["a"], ["b"])
    with pytest.raises(AdNannyEvalError, match="one class only"):
        base.fit(["a b", "c"], ["a", "d"], np.array([True, True]))
    with pytest.raises(AdNannyEvalError, match=r"must be booleans \(True = non-defect\)"):
        base.fit(["a", "c"], ["a", "d"], np.array(["good", "bad"]))
    with pytest.raises(AdNannyEvalError, match="must pair up row by row, got 2 and 1"):
        base.fit(["a", "c"], ["a"], np.array([True, False]))
    with pytest.raises(AdNannyEvalError, match=r"`right`\[1\] must be a string, got NoneType"):
        token_overlap(["a", "b"], ["a", None])  # type: ignore[list-item]
    with pytest.raises(AdNannyEvalError, match="hold no tokens"):
        TfidfModel(["", "!!"])
    with pytest.raises(AdNannyEvalError, match=r"`threshold` must be in \(0, 1\), got 1.0"):
        LogRegConfig(threshold=1.0)
    with pytest.raises(AdNannyEvalError, match="features have 2 columns but the model has 1"):
        BalancedLogisticRegression(feature_names=("x",)).fit(np.zeros((4, 2)), np.array([1, 0, 1, 0], bool))
    with pytest.raises(AdNannyEvalError, match="2 history items but 1 history ratings"):
        genre_features([{"a"}], [[{"a"}, {"b"}]], [[4.0]])


def test_import_stays_light():
    code = (
        "import sys, adnanny_eval, adnanny_eval.baselines; "
        "bad = [m for m in ('sklearn', 'torch') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
