"""Queries, query-ad judgments, users, keywords and logs of the synthetic ads world, labeled by stated rules.

Query-ad rules (paper §3.2 / §5.1 label semantics):
* relevance: different category -> bad; same category, different product -> fair; same product but a brand or
  price conflict -> fair; otherwise good;
* location: bad iff the query names a city and the ad serves a different city;
* quality: bad iff the ad carries a creative defect.
Labels then get realistic noise (a few percent moved to an adjacent grade), flagged in `noisy`.

Ad-user rules: 3 = the user's main product; 2 = same category other product, or a secondary interest;
1 = same category group; 0 = unrelated.

Every labeled example carries `reasons` (the rule outcomes), from which `rationale` writes reference reasoning.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from adnanny_cook.sample.catalog import Ad, Category

__all__ = ["IMPRESSION_COLUMNS", "LOG_DAYS", "LOG_START", "Query", "User", "keyword_queries", "label_ad_user", "label_query_ad", "make_impressions",
           "make_queries", "make_query_ad", "make_users"]

_CHEAP = ("cheap", "affordable", "budget")
_LUX = ("luxury", "high-end", "premium")
_INTENT_W = {"buy": 4, "research": 3, "compare": 1, "local": 2, "price": 3}


@dataclass
class Query:
    id: str
    text: str
    category: str
    group: str
    product: str
    intent: str
    brand: str | None = None
    price: str | None = None  # "cheap" | "luxury" | "under N"
    city: str | None = None
    near_me: bool = False


@dataclass
class User:
    id: str
    main_category: str
    main_product: str
    second_category: str
    events: list[str] = field(default_factory=list)

    @property
    def history(self) -> str:
        return "; ".join(self.events)


def _query_from_ad(rng: random.Random, qid: str, ad: Ad, cat: Category, brands: list[str]) -> Query:
    intent = rng.choices(list(_INTENT_W), weights=list(_INTENT_W.values()))[0]
    if intent == "local" and not cat.local:
        intent = "buy"
    p = ad.product
    q = Query(id=qid, text="", category=ad.category, group=ad.group, product=p, intent=intent)
    aud = rng.choice(cat.audiences)
    if rng.random() < 0.25:
        q.brand = ad.brand if rng.random() < 0.55 else rng.choice([b for b in brands if b != ad.brand])
    if intent == "price" or rng.random() < 0.15:
        r = rng.random()
        if cat.base_price > 0 and r < 0.3:
            limit = int(round(cat.base_price * rng.choice((0.7, 1.0, 1.5)), -1)) or 10
            q.price = f"under {limit}"
        elif r < 0.75:
            q.price = "cheap"
        else:
            q.price = "luxury"
    if cat.local and (intent == "local" or rng.random() < 0.3):
        if rng.random() < 0.3:
            q.near_me = True
        else:
            q.city = ad.city
    words: list[str] = []
    if q.price == "cheap":
        words.append(rng.choice(_CHEAP))
    elif q.price == "luxury":
        words.append(rng.choice(_LUX))
    if q.brand:
        words.append(q.brand)
    words.append(p)
    core = " ".join(words)
    if intent == "research":
        core = rng.choice((f"best {core} for {aud}", f"{core} reviews", f"how to choose {core}"))
    elif intent == "compare":
        other = rng.choice([b for b in brands if b != q.brand])
        core = f"{core} vs {other} {p}" if q.brand else f"{other} vs other {core}"
    elif intent == "buy":
        core = rng.choice((f"buy {core}", f"{core} deals", f"{core} for {aud}", core))
    if q.price and q.price.startswith("under"):
        core += f" under ${q.price.split()[1]}"
    if q.city:
        core += f" in {q.city}"
    elif q.near_me:
        core += " near me"
    q.text = core
    return q


def make_queries(rng: random.Random, cats: list[Category], ads: list[Ad], n: int) -> tuple[list[Query], list[Ad]]:
    """`n` queries, each derived from a target ad (returned alongside) with brand/price/location modifiers."""
    by_cat = {c.name: c for c in cats}
    out, targets = [], []
    seen: set[str] = set()
    while len(out) < n:
        ad = rng.choice(ads)
        cat = by_cat[ad.category]
        q = _query_from_ad(rng, f"q{len(out):05d}", ad, cat, list(cat.brands))
        if q.text in seen:
            continue
        seen.add(q.text)
        out.append(q)
        targets.append(ad)
    return out, targets


def _price_conflict(q: Query, ad: Ad) -> bool:
    if q.price == "cheap":
        return ad.tier in ("premium", "luxury")
    if q.price == "luxury":
        return ad.tier == "budget"
    if q.price and q.price.startswith("under"):
        return ad.price > float(q.price.split()[1])
    return False


def label_query_ad(q: Query, ad: Ad) -> tuple[dict[str, str], dict[str, Any]]:
    """Rule labels and the reasons behind them (used for reference rationales)."""
    reasons: dict[str, Any] = {"category_match": q.category == ad.category, "product_match": q.product == ad.product,
                               "brand_conflict": bool(q.brand and q.brand != ad.brand),
                               "brand_match": bool(q.brand and q.brand == ad.brand),
                               "price_conflict": _price_conflict(q, ad), "defects": list(ad.defects)}
    if not reasons["category_match"]:
        label = "bad"
    elif not reasons["product_match"] or reasons["brand_conflict"] or reasons["price_conflict"]:
        label = "fair"
    else:
        label = "good"
    loc_bad = bool(q.city and ad.city and q.city != ad.city)
    reasons["location_conflict"] = loc_bad
    return {"label": label, "location_label": "bad" if loc_bad else "good",
            "quality_label": ad.quality_label}, reasons


_ADJ = {"good": ("fair",), "fair": ("good", "bad"), "bad": ("fair",)}


def make_query_ad(rng: random.Random, cats: list[Category], ads: list[Ad], queries: list[Query],
                  targets: list[Ad], *, noise: float = 0.04) -> list[dict[str, Any]]:
    """Query-ad triples with a class balance like the paper's datasets (bad ~45%, fair ~35%, good ~20%;
    location defects ~2%, quality defects ~10%)."""
    by_cat: dict[str, list[Ad]] = {}
    by_prod: dict[tuple[str, str], list[Ad]] = {}
    for a in ads:
        by_cat.setdefault(a.category, []).append(a)
        by_prod.setdefault((a.category, a.product), []).append(a)
    nonlocal_ads = [a for a in ads if a.city is None]
    rows = []
    for q, tgt in zip(queries, targets, strict=True):
        picks: list[Ad] = []
        kind = rng.random()
        if kind < 0.16:
            picks.append(tgt)
        elif kind < 0.30:
            same = [a for a in by_prod[(q.category, q.product)] if a.id != tgt.id and
                    (q.city is None or a.city == q.city or rng.random() < 0.1)]
            picks.append(rng.choice(same) if same else tgt)
        elif kind < 0.55:
            other = [a for a in by_cat[q.category] if a.product != q.product and
                     (q.city is None or a.city == q.city or rng.random() < 0.1)]
            picks.append(rng.choice(other) if other else tgt)
        else:
            picks.append(rng.choice(nonlocal_ads if q.city and rng.random() < 0.9 else ads))
            if picks[-1].category == q.category:
                picks[-1] = rng.choice([a for a in nonlocal_ads if a.category != q.category])
        for ad in picks:
            labels, reasons = label_query_ad(q, ad)
            noisy = False
            if rng.random() < noise:
                labels["label"] = rng.choice(_ADJ[labels["label"]])
                noisy = True
            rows.append({"id": f"{q.id}-{ad.id}", "query_id": q.id, "ad_id": ad.id, "query": q.text,
                         "ad_title": ad.title, "ad_description": ad.description, "ad_url": ad.url, **labels,
                         "noisy": noisy, "reasons": reasons})
    return rows


def make_users(rng: random.Random, cats: list[Category], ads: list[Ad], n: int) -> list[User]:
    by_cat: dict[str, list[Ad]] = {}
    for a in ads:
        by_cat.setdefault(a.category, []).append(a)
    users = []
    for i in range(n):
        c1 = rng.choice(cats)
        c2 = rng.choice([c for c in cats if c.group != c1.group])
        p1 = rng.choice(c1.products)
        u = User(id=f"u{i:04d}", main_category=c1.name, main_product=p1, second_category=c2.name)
        ev = []
        for _ in range(rng.randint(4, 6)):
            a = rng.choice([x for x in by_cat[c1.name] if x.product == p1] or by_cat[c1.name])
            ev.append(rng.choice((f"searched '{rng.choice(('best', 'buy', 'cheap', 'top rated'))} {p1}'",
                                  f"clicked ad '{a.title}'", f"viewed {a.product} page on {a.brand}",
                                  f"compared {p1} prices", f"read '{p1} buying guide'")))
        for _ in range(rng.randint(1, 2)):
            p2 = rng.choice(c2.products)
            ev.append(rng.choice((f"searched '{p2}'", f"viewed {p2} page")))
        if rng.random() < 0.3:
            ev.append(f"purchased {rng.choice(c1.products)}")
        rng.shuffle(ev)
        u.events = ev
        users.append(u)
    return users


def label_ad_user(u: User, ad: Ad, cats_by_name: dict[str, Category]) -> tuple[int, dict[str, Any]]:
    g1 = cats_by_name[u.main_category].group
    if ad.category == u.main_category and ad.product == u.main_product:
        return 3, {"match": "main_product"}
    if ad.category == u.main_category:
        return 2, {"match": "main_category_other_product"}
    if ad.category == u.second_category:
        return 2, {"match": "secondary_interest"}
    if ad.group == g1:
        return 1, {"match": "same_group"}
    return 0, {"match": "unrelated"}


def make_ad_user(rng: random.Random, cats: list[Category], ads: list[Ad], users: list[User], per_user: int,
                 *, noise: float = 0.04) -> list[dict[str, Any]]:
    """Ad-user pairs, score 0 (the defect class) ~35% like Datasets G/H (RR 31-42%)."""
    cbn = {c.name: c for c in cats}
    by_cat: dict[str, list[Ad]] = {}
    for a in ads:
        by_cat.setdefault(a.category, []).append(a)
    rows = []
    for u in users:
        g1 = cbn[u.main_category].group
        for k in range(per_user):
            want = rng.choices((3, 2, 1, 0), weights=(0.24, 0.24, 0.17, 0.35))[0]
            if want == 3:
                pool = [a for a in by_cat[u.main_category] if a.product == u.main_product]
            elif want == 2:
                pool = [a for a in by_cat[u.main_category] if a.product != u.main_product] + \
                    by_cat[u.second_category]
            elif want == 1:
                pool = [a for a in ads if a.group == g1 and a.category != u.main_category]
            else:
                g2 = cbn[u.second_category].group
                pool = [a for a in ads if a.group not in (g1, g2)]
            ad = rng.choice(pool or ads)
            score, reasons = label_ad_user(u, ad, cbn)
            noisy = False
            if rng.random() < noise:
                score = max(0, min(3, score + rng.choice((-1, 1))))
                noisy = True
            rows.append({"id": f"{u.id}-{ad.id}-{k}", "user_id": u.id, "ad_id": ad.id, "user_history": u.history,
                         "ad_title": ad.title, "ad_description": ad.description, "label": score, "noisy": noisy,
                         "reasons": {**reasons, "main_product": u.main_product, "main_category": u.main_category,
                                     "second_category": u.second_category, "ad_product": ad.product,
                                     "ad_category": ad.category, "ad_brand": ad.brand}})
    return rows


def keyword_queries(rng: random.Random, cats: list[Category], ads: list[Ad]) -> list[dict[str, Any]]:
    """Keywords (one per product) with rule-compliant queries and non-compliant ones labeled by violation."""
    rows = []
    by_prod: dict[tuple[str, str], list[Ad]] = {}
    for a in ads:
        by_prod.setdefault((a.category, a.product), []).append(a)
    all_products = [(c.name, p) for c in cats for p in c.products]
    for ci, c in enumerate(cats):
        for pi, p in enumerate(c.products):
            ad = rng.choice([a for a in by_prod[(c.name, p)] if not a.defects] or by_prod[(c.name, p)])
            kid = f"kw{ci:02d}{pi}"
            comp: list[tuple[str, str]] = [
                (f"{ad.brand} {p}", "brand"),
                (f"best {p} for {rng.choice(c.audiences)}", "purpose"),
                (f"{p} reviews {rng.choice(('2024', '2025', 'and ratings'))}", "research_intent"),
            ]
            if c.base_price > 0:
                comp.append((f"{p} under ${int(round(c.base_price * 1.2, -1)) or 10}", "budget"))
            if c.local:
                comp.append((f"{p} near me", "near_me"))
                if ad.city:
                    comp.append((f"{p} in {ad.city}", "location"))
            else:
                comp.append((f"{rng.choice(('refurbished', 'compact', 'lightweight', 'top rated'))} {p}",
                             "domain_term"))
            for text, rule in comp:
                rows.append({"keyword_id": kid, "keyword": p, "query": text, "compliant": True, "rule": rule,
                             "ad_id": ad.id, "ad_title": ad.title, "ad_description": ad.description,
                             "landing_page": ad.landing_page, "category": c.name})
            broader = c.name if c.name != p else c.group
            other_c, other_p = rng.choice([x for x in all_products if x[0] != c.name])
            dup_src = comp[0][0]
            bad = [(broader, "broader"), (f"{rng.choice(('cheap', 'best'))} {other_p}", "off_topic"),
                   (dup_src + "s" if not dup_src.endswith("s") else dup_src.upper().lower() + " online",
                    "near_duplicate")]
            for text, rule in bad:
                rows.append({"keyword_id": kid, "keyword": p, "query": text, "compliant": False, "rule": rule,
                             "ad_id": ad.id, "ad_title": ad.title, "ad_description": ad.description,
                             "landing_page": ad.landing_page, "category": c.name})
    return rows


#: Click model of the logs: P(click) at the top slot by relevance grade, decaying with position as 1/pos^0.7.
_P_CLICK = {"good": 0.40, "fair": 0.10, "bad": 0.02}
_RANK_SCORE = {"good": 2.0, "fair": 1.0, "bad": 0.0}
#: The logs cover four weeks from this (naive UTC) instant.
LOG_START = datetime(2026, 1, 5)
LOG_DAYS = 28
#: Advertiser weight: log-normal spread and its weight in the ad server's ranking (head ads win most auctions,
#: so they collect clicks from many distinct queries).
_WEIGHT_SIGMA = 1.0
_WEIGHT_IN_RANK = 0.7
_ACTIVITY_ALPHA = 3.0
#: Columns of `logs/impressions.parquet`, in order.
IMPRESSION_COLUMNS = ("impression_id", "session_id", "user_id", "timestamp", "query_id", "query", "query_brand",
                      "query_price", "query_location", "query_intent", "query_category", "ad_id", "ad_brand",
                      "ad_tier", "ad_price", "ad_city", "ad_category", "position", "relevance", "clicked")


def make_impressions(rng: random.Random, queries: list[Query], qa_rows: list[dict[str, Any]], ads: list[Ad],
                     users: list[User], n_sessions: int, *, slots: int = 3) -> pl.DataFrame:
    """Impression/click logs of `n_sessions` sessions by the world's `users` over four weeks.

    Why this shape: retrieval rewards (adnanny-rl) need a *held-out* set of clicked queries with several distinct
    queries per ad, and a CTR model needs positions and non-clicks. So each session belongs to a user (`user_id`;
    active users have more sessions) and holds 1-3 searches at a `timestamp`; a search's query follows the user's
    interests (mostly the main product, else the main or second category, sometimes anything). An ad server ranks
    the ads of the query's product and category (plus the query's judged ad and one exploration ad) by relevance
    grade, advertiser weight and noise, and shows the top `slots`; clicks follow relevance and position (a
    location conflict or a creative defect lowers them). Query attributes (brand, price, location, intent) are
    logged for click-attribute metrics (§5.3). Rows come in time order; `session_id` numbers sessions in time.
    """
    by_q: dict[str, list[str]] = {}
    for r in qa_rows:
        by_q.setdefault(r["query_id"], []).append(r["ad_id"])
    by_prod: dict[tuple[str, str], list[Ad]] = {}
    by_cat: dict[str, list[Ad]] = {}
    for a in ads:
        by_prod.setdefault((a.category, a.product), []).append(a)
        by_cat.setdefault(a.category, []).append(a)
    amap = {a.id: a for a in ads}
    q_prod: dict[tuple[str, str], list[Query]] = {}
    q_cat: dict[str, list[Query]] = {}
    for q in queries:
        q_prod.setdefault((q.category, q.product), []).append(q)
        q_cat.setdefault(q.category, []).append(q)
    log_w = {a.id: rng.gauss(0.0, _WEIGHT_SIGMA) for a in ads}         # log advertiser bid x budget, per ad
    activity = [rng.paretovariate(_ACTIVITY_ALPHA) for _ in users]       # some heavy users, many light ones

    cands: dict[str, list[tuple[Ad, str, str]]] = {}                     # query id -> (ad, relevance, location)

    def candidates(q: Query) -> list[tuple[Ad, str, str]]:
        if q.id not in cands:
            pool = {a.id: a for a in by_prod[(q.category, q.product)]}
            pool.update((a.id, a) for a in rng.sample(by_cat[q.category], min(2, len(by_cat[q.category]))))
            pool.update((aid, amap[aid]) for aid in by_q.get(q.id, ()))
            out = []
            for a in pool.values():
                lab, _ = label_query_ad(q, a)
                out.append((a, lab["label"], lab["location_label"]))
            cands[q.id] = out
        return cands[q.id]

    starts = sorted(rng.random() * LOG_DAYS * 86400 for _ in range(n_sessions))
    session_users = rng.choices(users, weights=activity, k=n_sessions)
    width = max(5, len(str(n_sessions)))
    cols: dict[str, list[Any]] = {k: [] for k in ("impression_id", "session_id", "user_id", "timestamp",
                                                  "query_id", "ad_id", "position", "relevance", "clicked")}
    for s, (t0, u) in enumerate(zip(starts, session_users, strict=True)):
        sid = f"s{s:0{width}d}"
        t = t0
        for k in range(rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]):
            r = rng.random()
            if r < 0.5:
                pool_q = q_prod.get((u.main_category, u.main_product)) or q_cat.get(u.main_category)
            elif r < 0.7:
                pool_q = q_cat.get(u.main_category)
            elif r < 0.85:
                pool_q = q_cat.get(u.second_category)
            else:
                pool_q = None
            q = rng.choice(pool_q or queries)
            shown = list(candidates(q))
            explore = rng.choice(ads)
            if all(a.id != explore.id for a, _, _ in shown):
                lab, _ = label_query_ad(q, explore)
                shown.append((explore, lab["label"], lab["location_label"]))
            ranked = sorted(shown, key=lambda x: -(_RANK_SCORE[x[1]] - (1.0 if x[2] == "bad" else 0.0)
                                                   + _WEIGHT_IN_RANK * log_w[x[0].id] + rng.gauss(0.0, 0.8)))
            ts = LOG_START + timedelta(seconds=int(t))
            for pos, (a, lab, loc) in enumerate(ranked[:slots], 1):
                p = _P_CLICK[lab] / pos ** 0.7 * (0.3 if loc == "bad" else 1.0) * (0.6 if a.defects else 1.0)
                cols["impression_id"].append(f"{sid}-{k}-{pos}")
                cols["session_id"].append(sid)
                cols["user_id"].append(u.id)
                cols["timestamp"].append(ts)
                cols["query_id"].append(q.id)
                cols["ad_id"].append(a.id)
                cols["position"].append(pos)
                cols["relevance"].append(lab)
                cols["clicked"].append(rng.random() < p)
            t += rng.uniform(20, 240)
    # query and ad attributes by join (one Python object per impression would cost ~1 s per 30k rows)
    qdf = pl.DataFrame({"query_id": [q.id for q in queries], "query": [q.text for q in queries],
                        "query_brand": [q.brand for q in queries], "query_price": [q.price for q in queries],
                        "query_location": [q.city or ("near me" if q.near_me else None) for q in queries],
                        "query_intent": [q.intent for q in queries], "query_category": [q.category for q in queries]},
                       schema_overrides={"query_brand": pl.String, "query_price": pl.String,
                                         "query_location": pl.String})
    adf = pl.DataFrame({"ad_id": [a.id for a in ads], "ad_brand": [a.brand for a in ads],
                        "ad_tier": [a.tier for a in ads], "ad_price": [float(a.price) for a in ads],
                        "ad_city": [a.city for a in ads], "ad_category": [a.category for a in ads]},
                       schema_overrides={"ad_city": pl.String})
    imp = pl.DataFrame(cols, schema_overrides={"position": pl.Int64, "timestamp": pl.Datetime("us")})
    return (imp.join(qdf, on="query_id", how="left", maintain_order="left")
            .join(adf, on="ad_id", how="left", maintain_order="left")
            .select(IMPRESSION_COLUMNS))
