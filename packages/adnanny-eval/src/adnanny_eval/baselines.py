"""Small task models that AdNanny exists to replace, as reference rows beside a fine-tuned labeler.

Two baselines, both a class-balanced logistic regression over a handful of hand-made features:

* `LexicalBaseline` — for text-pair relevance (query vs ad title + description; user history vs item text).
  Features per pair (``LEXICAL_FEATURES``):

  - ``tfidf_cosine``: cosine of the two texts' TF-IDF vectors. The vocabulary and idf are fitted on the
    *training* texts only (both sides), with scikit-learn's defaults: raw term counts, smoothed idf
    ``ln((1 + N) / (1 + df)) + 1``, l2-normalised rows; words never seen in training carry no weight.
  - ``jaccard``: |L ∩ R| / |L ∪ R| over token sets (0 when both are empty).
  - ``coverage``: |L ∩ R| / |L| — the share of the query's (left text's) tokens found in the right text.

  Tokens are `adnanny_eval.lexical.tokenize`'s lower-case alphanumeric runs (the same tokenizer as the
  frozen BM25 of Table 6), so "Airport-Parking" matches "airport parking".

* `PopularityGenreBaseline` — for the ad–user task on rating data (item = a movie with genres, user
  history = earlier rated items). Features per (user, item) pair (``POPULARITY_GENRE_FEATURES``):

  - ``log_popularity``: ln(1 + number of training-period ratings of the item);
  - ``item_mean``: the item's mean training-period rating, shrunk towards the global mean with
    `prior_weight` pseudo-ratings (an unseen item gets the global mean);
  - ``genre_jaccard``: Jaccard of the item's genres and the union of the history's genres;
  - ``genre_share``: share of history items that share at least one genre with the item;
  - ``history_mean``: the user's mean rating over the history (the global mean when it holds no ratings);
  - ``genre_history_mean``: the user's mean rating over the history items that share a genre with the item
    (``history_mean`` when none does).

  The history ratings are features only because the user-history text the language model reads carries
  them too: both models see the same information.

Both predict P(non-defect) (positive = non-defect, as everywhere in adnanny-eval) and a label by a threshold
(0.5 by default: class-balanced weights already put the two classes on an equal footing). Features are
standardised before the regression (so one L2 penalty `C` means the same for every feature), and the
solver (lbfgs) is deterministic: the same rows give bit-identical predictions. scikit-learn is imported
only when a model is fitted (optional extra ``adnanny-eval[baselines]``), so ``import adnanny_eval`` stays
light; import this module explicitly: ``from adnanny_eval.baselines import LexicalBaseline``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.lexical import tokenize

__all__ = [
    "LEXICAL_FEATURES",
    "POPULARITY_GENRE_FEATURES",
    "BalancedLogisticRegression",
    "LexicalBaseline",
    "LogRegConfig",
    "PopularityGenreBaseline",
    "PopularityTable",
    "TfidfModel",
    "genre_features",
    "predictions_frame",
    "token_overlap",
]

LEXICAL_FEATURES: tuple[str, ...] = ("tfidf_cosine", "jaccard", "coverage")
POPULARITY_GENRE_FEATURES: tuple[str, ...] = (
    "log_popularity",
    "item_mean",
    "genre_jaccard",
    "genre_share",
    "history_mean",
    "genre_history_mean",
)


def _sklearn() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise AdNannyEvalError(
            "the baselines need scikit-learn; install it with `pip install 'adnanny-eval[baselines]'`"
        ) from exc
    import sklearn

    return sklearn


def _as_bool(y: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise AdNannyEvalError(f"`{what}` must have one entry per row ({n}), got shape {arr.shape}")
    if arr.dtype != bool:
        raise AdNannyEvalError(
            f"`{what}` must be booleans (True = non-defect), got dtype {arr.dtype}; "
            "map labels with `adnanny_eval.to_positive(labels, view)` first"
        )
    return arr


def _check_pairs(left: Sequence[str], right: Sequence[str]) -> None:
    if len(left) != len(right):
        raise AdNannyEvalError(
            f"`left` and `right` must pair up row by row, got {len(left)} and {len(right)} texts"
        )
    for name, side in (("left", left), ("right", right)):
        for i, text in enumerate(side):
            if not isinstance(text, str):
                raise AdNannyEvalError(
                    f"`{name}`[{i}] must be a string, got {type(text).__name__} {text!r}; "
                    "write empty text as ''"
                )


# ----------------------------------------------------------------------------------------------- features
def token_overlap(left: Sequence[str], right: Sequence[str]) -> np.ndarray:
    """[n, 2]: token-set Jaccard and the share of `left`'s tokens found in `right`, per pair."""
    _check_pairs(left, right)
    out = np.zeros((len(left), 2), dtype=np.float64)  # [n, (jaccard, coverage)]
    for i, (a, b) in enumerate(zip(left, right, strict=True)):
        sa, sb = set(tokenize(a)), set(tokenize(b))
        inter = len(sa & sb)
        union = len(sa | sb)
        out[i, 0] = inter / union if union else 0.0
        out[i, 1] = inter / len(sa) if sa else 0.0
    return out


class TfidfModel:
    """TF-IDF vectors over a vocabulary fitted once; `cosine(left, right)` scores aligned text pairs."""

    def __init__(self, documents: Sequence[str]) -> None:
        _sklearn()
        from sklearn.feature_extraction.text import TfidfVectorizer

        docs = list(documents)
        if not any(tokenize(d) for d in docs):
            raise AdNannyEvalError(
                f"`documents` ({len(docs)} texts) hold no tokens; TF-IDF needs some training text"
            )
        self._vec = TfidfVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None)
        self._vec.fit(docs)

    @property
    def vocabulary(self) -> dict[str, int]:
        """Token -> column index."""
        return dict(self._vec.vocabulary_)

    @property
    def idf(self) -> np.ndarray:
        """[V] idf weights in column order."""
        return np.asarray(self._vec.idf_, dtype=np.float64)

    def cosine(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """[n] cosine of each pair's l2-normalised TF-IDF vectors (0 when a side has no known token)."""
        _check_pairs(left, right)
        if len(left) == 0:
            return np.zeros(0, dtype=np.float64)
        a = self._vec.transform(list(left))  # [n, V] sparse, rows l2-normalised (or all-zero)
        b = self._vec.transform(list(right))  # [n, V]
        return np.asarray(a.multiply(b).sum(axis=1), dtype=np.float64).ravel()


# ----------------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class LogRegConfig:
    """The class-balanced logistic regression every baseline ends in.

    `C` is the inverse L2 strength on standardised features; `threshold` turns P(non-defect) into a label;
    `seed` is passed to scikit-learn (lbfgs itself is deterministic, so it matters only for other solvers).
    """

    C: float = 1.0
    max_iter: int = 2000
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.C > 0 and math.isfinite(self.C)):
            raise AdNannyEvalError(f"`C` must be a positive finite number, got {self.C!r}")
        if self.max_iter < 1:
            raise AdNannyEvalError(f"`max_iter` must be >= 1, got {self.max_iter!r}")
        if not 0.0 < self.threshold < 1.0:
            raise AdNannyEvalError(f"`threshold` must be in (0, 1), got {self.threshold!r}")


class BalancedLogisticRegression:
    """Standardise features, then a logistic regression with class weights n / (2·n_class).

    Why balanced: defects are the minority in most ads data, and BACC — the metric every table reports —
    weighs both classes equally; an unweighted model would trade defect recall for accuracy.
    """

    def __init__(self, config: LogRegConfig | None = None, *, feature_names: Sequence[str] = ()) -> None:
        self.config = config or LogRegConfig()
        self.feature_names = tuple(feature_names)
        self._model: Any = None

    def fit(self, X: Any, y: Any) -> BalancedLogisticRegression:
        """Fit on features `X` [n, d] and booleans `y` [n] (True = non-defect); both classes must occur."""
        _sklearn()
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = self._check_x(X, fitted=False)
        t = _as_bool(y, x.shape[0], "y")
        n_pos = int(t.sum())
        if n_pos == 0 or n_pos == t.shape[0]:
            raise AdNannyEvalError(
                f"training rows hold one class only ({n_pos} non-defect of {t.shape[0]}); "
                "a defect classifier needs both defect and non-defect rows"
            )
        cfg = self.config
        self._model = make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=cfg.C, class_weight="balanced", max_iter=cfg.max_iter, solver="lbfgs", random_state=cfg.seed
            ),
        )
        self._model.fit(x, t)
        return self

    def _check_x(self, X: Any, *, fitted: bool) -> np.ndarray:
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2:
            raise AdNannyEvalError(f"features must be a 2-D [rows, features] array, got shape {x.shape}")
        if self.feature_names and x.shape[1] != len(self.feature_names):
            raise AdNannyEvalError(
                f"features have {x.shape[1]} columns but the model has {len(self.feature_names)} "
                f"({', '.join(self.feature_names)})"
            )
        if not np.isfinite(x).all():
            bad = sorted({int(i) for i in np.argwhere(~np.isfinite(x))[:, 0]})
            raise AdNannyEvalError(f"features of rows {bad[:10]} are not finite")
        if fitted and self._model is None:
            raise AdNannyEvalError("the model is not fitted yet; call `fit` first")
        return x

    def predict_proba(self, X: Any) -> np.ndarray:
        """[n] P(non-defect)."""
        x = self._check_x(X, fitted=True)
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        clf = self._model[-1]
        col = int(np.flatnonzero(clf.classes_ == True)[0])  # noqa: E712 - numpy bool classes
        return np.asarray(self._model.predict_proba(x)[:, col], dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """[n] booleans (True = non-defect): P(non-defect) >= `threshold`."""
        return self.predict_proba(X) >= self.config.threshold

    def coefficients(self) -> dict[str, float]:
        """Weight of each (standardised) feature, plus ``intercept`` — for reports."""
        if self._model is None:
            raise AdNannyEvalError("the model is not fitted yet; call `fit` first")
        clf = self._model[-1]
        names = self.feature_names or tuple(f"x{i}" for i in range(clf.coef_.shape[1]))
        out = {n: float(w) for n, w in zip(names, clf.coef_[0], strict=True)}
        out["intercept"] = float(clf.intercept_[0])
        return out


class LexicalBaseline:
    """TF-IDF cosine + token overlap + class-balanced logistic regression on text pairs.

    ``fit(left, right, y)`` fits the TF-IDF vocabulary on the training texts (both sides) and the regression
    on their features; ``predict_proba`` / ``predict`` score new pairs with both frozen.
    """

    feature_names = LEXICAL_FEATURES

    def __init__(self, config: LogRegConfig | None = None) -> None:
        self.config = config or LogRegConfig()
        self.tfidf: TfidfModel | None = None
        self.model = BalancedLogisticRegression(self.config, feature_names=LEXICAL_FEATURES)

    def features(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """[n, 3] (tfidf_cosine, jaccard, coverage) with the fitted vocabulary."""
        if self.tfidf is None:
            raise AdNannyEvalError("the baseline is not fitted yet; call `fit` first")
        _check_pairs(left, right)
        return np.column_stack([self.tfidf.cosine(left, right), token_overlap(left, right)])

    def fit(self, left: Sequence[str], right: Sequence[str], y: Any) -> LexicalBaseline:
        """Fit on training pairs and booleans `y` (True = non-defect)."""
        _check_pairs(left, right)
        if len(left) == 0:
            raise AdNannyEvalError("no training rows: `left` and `right` are empty")
        _as_bool(y, len(left), "y")
        self.tfidf = TfidfModel([*left, *right])
        self.model.fit(self.features(left, right), y)
        return self

    def predict_proba(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """[n] P(non-defect)."""
        return self.model.predict_proba(self.features(left, right))

    def predict(self, left: Sequence[str], right: Sequence[str]) -> np.ndarray:
        """[n] booleans (True = non-defect)."""
        return self.model.predict(self.features(left, right))


# ----------------------------------------------------------------------------------------------- ad-user
@dataclass(frozen=True)
class PopularityTable:
    """Per-item rating counts and sums from the training period (nothing after it may leak in)."""

    counts: Mapping[str, int]
    sums: Mapping[str, float]
    global_mean: float
    prior_weight: float = 5.0

    @classmethod
    def fit(
        cls, item_ids: Sequence[str], ratings: Sequence[float], *, prior_weight: float = 5.0
    ) -> PopularityTable:
        """Count each item's ratings and their sum; the global mean is over all of them."""
        if len(item_ids) != len(ratings):
            raise AdNannyEvalError(
                f"`item_ids` and `ratings` must align, got {len(item_ids)} and {len(ratings)} entries"
            )
        if len(item_ids) == 0:
            raise AdNannyEvalError("no training-period ratings: `item_ids` is empty")
        if prior_weight < 0:
            raise AdNannyEvalError(f"`prior_weight` must be >= 0, got {prior_weight!r}")
        r = np.asarray(ratings, dtype=np.float64)
        if not np.isfinite(r).all():
            raise AdNannyEvalError(f"`ratings` hold non-finite values at {np.flatnonzero(~np.isfinite(r))[:10]}")
        counts: Counter[str] = Counter()
        sums: dict[str, float] = {}
        for item, value in zip(item_ids, r.tolist(), strict=True):
            key = str(item)
            counts[key] += 1
            sums[key] = sums.get(key, 0.0) + value
        return cls(dict(counts), sums, float(r.mean()), float(prior_weight))

    def log_popularity(self, item: str) -> float:
        """ln(1 + training ratings of `item`)."""
        return math.log1p(self.counts.get(str(item), 0))

    def mean(self, item: str) -> float:
        """Shrunk mean rating: (sum + m·global) / (count + m); the global mean for an unseen item."""
        key = str(item)
        n = self.counts.get(key, 0)
        m = self.prior_weight
        if n + m == 0:
            return self.global_mean
        return (self.sums.get(key, 0.0) + m * self.global_mean) / (n + m)


def genre_features(
    item_genres: Sequence[Collection[str]],
    history_genres: Sequence[Sequence[Collection[str]]],
    history_ratings: Sequence[Sequence[float]] | None = None,
    *,
    default_rating: float = 0.0,
) -> np.ndarray:
    """[n, 4]: genre_jaccard, genre_share, history_mean, genre_history_mean per (item, history) pair.

    `history_genres[i]` lists the genre sets of row i's history items in time order; `history_ratings[i]`
    their ratings (same length). Without ratings, or for an empty history, both means are `default_rating`.
    """
    n = len(item_genres)
    if len(history_genres) != n:
        raise AdNannyEvalError(f"`item_genres` has {n} rows but `history_genres` has {len(history_genres)}")
    if history_ratings is not None and len(history_ratings) != n:
        raise AdNannyEvalError(f"`item_genres` has {n} rows but `history_ratings` has {len(history_ratings)}")
    out = np.zeros((n, 4), dtype=np.float64)  # [n, (jaccard, share, history_mean, genre_history_mean)]
    for i in range(n):
        g = {x.lower() for x in item_genres[i]}
        hist = [{x.lower() for x in h} for h in history_genres[i]]
        rates = None if history_ratings is None else [float(v) for v in history_ratings[i]]
        if rates is not None and len(rates) != len(hist):
            raise AdNannyEvalError(
                f"row {i}: {len(hist)} history items but {len(rates)} history ratings; they must align"
            )
        union = set().union(*hist) if hist else set()
        both = g | union
        out[i, 0] = len(g & union) / len(both) if both else 0.0
        sharing = [j for j, h in enumerate(hist) if h & g]
        out[i, 1] = len(sharing) / len(hist) if hist else 0.0
        if rates:
            mean = sum(rates) / len(rates)
            out[i, 2] = mean
            out[i, 3] = sum(rates[j] for j in sharing) / len(sharing) if sharing else mean
        else:
            out[i, 2] = out[i, 3] = default_rating
    return out


class PopularityGenreBaseline:
    """Item popularity/mean rating in the training period + genre overlap with the user's history, then the
    same class-balanced logistic regression as `LexicalBaseline`.

    Build it from a `PopularityTable` of training-period ratings, then ``fit`` / ``predict_proba`` on rows
    given as item ids, item genre sets, history genre sets and (optionally) history ratings.
    """

    feature_names = POPULARITY_GENRE_FEATURES

    def __init__(self, popularity: PopularityTable, config: LogRegConfig | None = None) -> None:
        self.popularity = popularity
        self.config = config or LogRegConfig()
        self.model = BalancedLogisticRegression(self.config, feature_names=POPULARITY_GENRE_FEATURES)

    def features(
        self,
        items: Sequence[str],
        item_genres: Sequence[Collection[str]],
        history_genres: Sequence[Sequence[Collection[str]]],
        history_ratings: Sequence[Sequence[float]] | None = None,
    ) -> np.ndarray:
        """[n, 6] in ``POPULARITY_GENRE_FEATURES`` order."""
        if len(items) != len(item_genres):
            raise AdNannyEvalError(f"`items` has {len(items)} rows but `item_genres` has {len(item_genres)}")
        pop = np.array(
            [[self.popularity.log_popularity(it), self.popularity.mean(it)] for it in items], dtype=np.float64
        ).reshape(len(items), 2)  # [n, 2]
        genre = genre_features(
            item_genres, history_genres, history_ratings, default_rating=self.popularity.global_mean
        )  # [n, 4]
        return np.column_stack([pop, genre])

    def fit(
        self,
        items: Sequence[str],
        item_genres: Sequence[Collection[str]],
        history_genres: Sequence[Sequence[Collection[str]]],
        history_ratings: Sequence[Sequence[float]] | None,
        y: Any,
    ) -> PopularityGenreBaseline:
        """Fit the regression on training rows and booleans `y` (True = non-defect)."""
        if len(items) == 0:
            raise AdNannyEvalError("no training rows: `items` is empty")
        self.model.fit(self.features(items, item_genres, history_genres, history_ratings), y)
        return self

    def predict_proba(
        self,
        items: Sequence[str],
        item_genres: Sequence[Collection[str]],
        history_genres: Sequence[Sequence[Collection[str]]],
        history_ratings: Sequence[Sequence[float]] | None = None,
    ) -> np.ndarray:
        """[n] P(non-defect)."""
        return self.model.predict_proba(self.features(items, item_genres, history_genres, history_ratings))

    def predict(
        self,
        items: Sequence[str],
        item_genres: Sequence[Collection[str]],
        history_genres: Sequence[Sequence[Collection[str]]],
        history_ratings: Sequence[Sequence[float]] | None = None,
    ) -> np.ndarray:
        """[n] booleans (True = non-defect)."""
        return self.model.predict(self.features(items, item_genres, history_genres, history_ratings))


# ----------------------------------------------------------------------------------------------- output
def predictions_frame(
    ids: Sequence[Any],
    score: Any,
    *,
    defect_label: str,
    non_defect_label: str,
    threshold: float = 0.5,
    field: str = "label",
) -> Any:
    """A predictions table in serve's contract (``id``, `field`, ``score``) that `adnanny-eval report` reads.

    A binary baseline knows defect vs non-defect only, so every non-defect row gets `non_defect_label`
    (e.g. ``"good"`` under the bad view, where fair and good are both non-defect): evaluate it only under
    a view that puts `non_defect_label` on the non-defect side.
    """
    import polars as pl

    s = np.asarray(score, dtype=np.float64)
    if s.shape != (len(ids),):
        raise AdNannyEvalError(f"`score` must have one entry per id ({len(ids)}), got shape {s.shape}")
    if not 0.0 < threshold < 1.0:
        raise AdNannyEvalError(f"`threshold` must be in (0, 1), got {threshold!r}")
    labels = np.where(s >= threshold, non_defect_label, defect_label)
    return pl.DataFrame({"id": [str(i) for i in ids], field: labels.tolist(), "score": s})
