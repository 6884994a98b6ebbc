"""`make_sample(out_dir, seed)`: the synthetic ads world used by demos and by every package's tests.

Layout (see the package README for the columns):

    manifest.json                 seed, sizes, class balance, file list
    catalog/ads.parquet           ads: category, brand, tier, price, city, title, description, url, landing page, defects
    catalog/categories.json       categories with brands, products, audiences
    queries.parquet               queries with intent, brand, price and location attributes
    query_ad.parquet              labeled triples (task `query_ad` input fields + label fields; `noisy`, `reasons`)
    users.parquet                 user histories
    ad_user.parquet               labeled ad-user pairs (task `ad_user`)
    keywords.parquet              keyword -> compliant and non-compliant queries (with the rule / violation)
    keyword_query.parquet         compliant pairs as task `keyword_query` rows (label field `query`)
    logs/impressions.parquet      impressions and clicks of the users' sessions over four weeks (user_id,
                                  session_id, timestamp, query and ad attributes, position, clicked);
                                  `click_split(DIR)` cuts them into train / held-out
    golden/{query_ad,ad_user,keyword_query}.jsonl   golden sets with `reference_reasoning`
    corpus/corpus.parquet, card.json, README.md     ready label+reasoning corpus (corpus schema)
    tokenizer/                    byte-level BPE (tokenizer.json, tokenizer_config.json with ChatML template)
"""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

from adnanny_cook.corpus import atomic_write_bytes, make_row, write_corpus
from adnanny_cook.errors import ConfigError
from adnanny_cook.sample.clicks import SPLIT_BY, ClickSplit, click_split, queries_by_ad

__all__ = ["SAMPLE_SIZES", "SPLIT_BY", "ClickSplit", "click_split", "make_sample", "queries_by_ad"]

#: Default sizes: a few thousand corpus rows in well under 20 s on one core. `sessions`: 6,000 sessions of 1-3
#: searches (~31k impressions, ~5.7k clicks), so a 20% held-out cut still has several distinct clicked queries
#: for a hundred-odd ads.
SAMPLE_SIZES: dict[str, int] = {"ads_per_category": 14, "queries": 2600, "users": 260, "ads_per_user": 5,
                                "sessions": 6000, "corpus_query_ad": 1500, "corpus_ad_user": 700,
                                "corpus_keyword_query": 300, "golden_query_ad": 60, "golden_ad_user": 40,
                                "golden_keyword_query": 40, "vocab_size": 8192}


def _write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import polars as pl

    clean = [{k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
             for r in rows]
    buf = io.BytesIO()
    pl.DataFrame(clean, infer_schema_length=None).write_parquet(buf)
    atomic_write_bytes(path, buf.getvalue())


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                     for r in rows).encode())


def make_sample(out_dir: str | Path, seed: int = 0, *, sizes: dict[str, int] | None = None,
                tokenizer: bool = True) -> dict[str, Any]:
    """Write the sample world under `out_dir` and return its manifest. Deterministic for a given `seed`."""
    from dataclasses import asdict

    from adnanny_cook.card import write_card
    from adnanny_cook.sample.catalog import make_catalog
    from adnanny_cook.sample.rationale import ad_user_rationale, keyword_query_rationale, query_ad_rationale
    from adnanny_cook.sample.world import (keyword_queries, make_ad_user, make_impressions, make_queries,
                                           make_query_ad, make_users)
    from adnanny_cook.split import split_rows

    t0 = time.perf_counter()
    sz = dict(SAMPLE_SIZES)
    if sizes:
        unknown = sorted(set(sizes) - set(sz))
        if unknown:
            raise ConfigError(f"unknown `sizes` keys {unknown}; known: {sorted(sz)}")
        sz.update(sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cats, ads = make_catalog(rng, sz["ads_per_category"])
    queries, targets = make_queries(rng, cats, ads, sz["queries"])
    qa = make_query_ad(rng, cats, ads, queries, targets)
    users = make_users(rng, cats, ads, sz["users"])
    au = make_ad_user(rng, cats, ads, users, sz["ads_per_user"])
    kw = keyword_queries(rng, cats, ads)
    logs = make_impressions(rng, queries, qa, ads, users, sz["sessions"])

    _write_parquet([{**asdict(a), "quality_label": a.quality_label} for a in ads], out / "catalog/ads.parquet")
    atomic_write_bytes(out / "catalog/categories.json",
                       json.dumps([asdict(c) for c in cats], indent=1).encode())
    _write_parquet([asdict(q) for q in queries], out / "queries.parquet")
    _write_parquet(qa, out / "query_ad.parquet")
    _write_parquet([{**asdict(u), "history": u.history} for u in users], out / "users.parquet")
    _write_parquet(au, out / "ad_user.parquet")
    _write_parquet(kw, out / "keywords.parquet")
    kq = [{"id": f"{r['keyword_id']}-{i}", "keyword": r["keyword"], "ad_title": r["ad_title"],
           "ad_description": r["ad_description"], "landing_page": r["landing_page"], "query": r["query"],
           "rule": r["rule"], "category": r["category"]}
          for i, r in enumerate(kw) if r["compliant"]]
    _write_parquet(kq, out / "keyword_query.parquet")
    buf = io.BytesIO()
    logs.write_parquet(buf)
    atomic_write_bytes(out / "logs/impressions.parquet", buf.getvalue())

    # ---- rationales from the rules (only for noise-free labels: a rule rationale must agree with its label)
    qmap = {q.id: q for q in queries}
    amap = {a.id: a for a in ads}
    rr = random.Random(seed + 1)
    clean_qa = [r for r in qa if not r["noisy"]]
    for r in clean_qa:
        labels = {k: r[k] for k in ("label", "location_label", "quality_label")}
        r["reasoning"] = query_ad_rationale(rr, qmap[r["query_id"]], amap[r["ad_id"]], labels, r["reasons"])
    clean_au = [r for r in au if not r["noisy"]]
    for r in clean_au:
        first = r["user_history"].split("; ")[0]
        r["reasoning"] = ad_user_rationale(rr, first, r["label"], r["reasons"])
    for r in kq:
        r["reasoning"] = keyword_query_rationale(rr, r)

    # ---- golden sets: stratified by label so every label value appears
    gold_rng = random.Random(seed + 2)

    def stratified(rows: list[dict[str, Any]], n: int, key: str) -> list[dict[str, Any]]:
        by: dict[Any, list[dict[str, Any]]] = {}
        for r in rows:
            by.setdefault(r[key], []).append(r)
        picked: list[dict[str, Any]] = []
        vals = sorted(by, key=str)
        while len(picked) < n and any(by.values()):
            for v in vals:
                if by[v] and len(picked) < n:
                    picked.append(by[v].pop(gold_rng.randrange(len(by[v]))))
        return picked

    g_qa = stratified(clean_qa[-600:], sz["golden_query_ad"], "label")
    g_au = stratified(clean_au[-300:], sz["golden_ad_user"], "label")
    g_kq = gold_rng.sample(kq[-150:], min(sz["golden_keyword_query"], len(kq[-150:])))
    gold_ids = {r["id"] for r in g_qa + g_au + g_kq}

    def golden(rows: list[dict[str, Any]], task: str, fields: tuple[str, ...], labels: tuple[str, ...]
               ) -> list[dict[str, Any]]:
        return [{"id": r["id"], "task": task, "input": {f: r[f] for f in fields},
                 "labels": {k: r[k] for k in labels}, "reference_reasoning": r["reasoning"]} for r in rows]

    qa_in = ("query", "ad_title", "ad_description", "ad_url")
    au_in = ("user_history", "ad_title", "ad_description")
    kq_in = ("keyword", "ad_title", "ad_description", "landing_page")
    _write_jsonl(golden(g_qa, "query_ad", qa_in, ("label", "location_label", "quality_label")),
                 out / "golden/query_ad.jsonl")
    _write_jsonl(golden(g_au, "ad_user", au_in, ("label",)), out / "golden/ad_user.jsonl")
    _write_jsonl(golden(g_kq, "keyword_query", kq_in, ("query",)), out / "golden/keyword_query.jsonl")

    # ---- the ready corpus: each input in both modes (reasoning and label-only), split grouped by query/user/kw
    crng = random.Random(seed + 3)
    pool = [("query_ad", r, qa_in, ("label", "location_label", "quality_label"))
            for r in crng.sample([r for r in clean_qa if r["id"] not in gold_ids],
                                 min(sz["corpus_query_ad"], len(clean_qa)))]
    pool += [("ad_user", r, au_in, ("label",))
             for r in crng.sample([r for r in clean_au if r["id"] not in gold_ids],
                                  min(sz["corpus_ad_user"], len(clean_au)))]
    pool += [("keyword_query", r, kq_in, ("query",))
             for r in crng.sample([r for r in kq if r["id"] not in gold_ids], min(sz["corpus_keyword_query"],
                                                                                  len(kq) - len(g_kq)))]
    splits = split_rows([p[0] for p in pool], [{f: p[1][f] for f in p[2]} for p in pool], eval_fraction=0.1,
                        seed=seed)
    rows = []
    for (task, r, fin, flab), split in zip(pool, splits, strict=True):
        inp = {f: r[f] for f in fin}
        labels = {k: r[k] for k in flab}
        prov = {"source": "adnanny-cook sample", "seed": seed, "teacher": "rules", "prompt_id": "reference"}
        for mode in ("reasoning", "label"):
            rows.append(make_row(id=f"{task}-{r['id']}-{mode[0]}", task=task, mode=mode, input=inp, labels=labels,
                                 reasoning=r["reasoning"] if mode == "reasoning" else None, split=split,
                                 provenance=prov))
    crng.shuffle(rows)
    write_corpus(rows, out / "corpus")
    write_card(rows, out / "corpus", title=f"adnanny-cook sample corpus (seed {seed})",
               extra={"note": "reference rationales written from the labeling rules; noisy labels excluded"})

    texts: list[str] = []
    if tokenizer:
        from adnanny_cook.sample.tokenizer import train_tokenizer
        from adnanny_cook.tasks import render_chat

        texts = [render_chat([*r["messages"], {"role": "assistant", "content": r["target"]}]) for r in rows]
        texts += [a.landing_page for a in ads] + [q.text for q in queries] + [u.history for u in users]
        texts += [r["query"] for r in kw] + [a.title + " " + a.description for a in ads]
        texts += [" ".join(str(r[f]) for f in qa_in) for r in qa] + [r.get("reasoning") or "" for r in qa]
        texts += [json.dumps(asdict(c)) for c in cats]
        train_tokenizer(texts, out / "tokenizer", vocab_size=sz["vocab_size"])

    def rate(rows: list[dict[str, Any]], key: str, val: Any) -> float:
        return round(sum(r[key] == val for r in rows) / max(1, len(rows)), 4)

    manifest = {
        "kind": "adnanny-cook sample", "seed": seed, "sizes": sz,
        "counts": {"categories": len(cats), "ads": len(ads), "queries": len(queries), "query_ad": len(qa),
                   "users": len(users), "ad_user": len(au), "keywords": len({r['keyword_id'] for r in kw}),
                   "keyword_queries": len(kw), "impressions": logs.height,
                   "sessions": logs["session_id"].n_unique(), "clicks": int(logs["clicked"].sum()), "corpus_rows": len(rows),
                   "golden": {"query_ad": len(g_qa), "ad_user": len(g_au), "keyword_query": len(g_kq)}},
        "class_balance": {"query_ad.bad": rate(qa, "label", "bad"), "query_ad.fair": rate(qa, "label", "fair"),
                          "query_ad.good": rate(qa, "label", "good"),
                          "query_ad.location_bad": rate(qa, "location_label", "bad"),
                          "query_ad.quality_bad": rate(qa, "quality_label", "bad"),
                          "ad_user.score0": rate(au, "label", 0), "query_ad.noisy": rate(qa, "noisy", True)},
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest
