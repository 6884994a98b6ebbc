"""`adnanny-eval demo`: a complete report folder from built-in, seeded sample data (the README's main job).

It goes through the same code paths a user's files take: the sample gold/prediction files are written as
Parquet, read back, joined on `id`, mapped through every view, compared with paired bootstrap CIs, and
rendered as Markdown, CSV, JSON and a PNG; plus the Table 8 regression (the paper's own numbers) and a
replacement-gate report over seeded pairwise judgments. Query-generation metrics (Table 6) need the MiniLM
encoder and torch, so they run only with ``querygen=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl

from adnanny_eval.compare import DatasetComparison, compare_tables
from adnanny_eval.gate import GateRule, gate_report
from adnanny_eval.io import atomic_open, atomic_write_text, read_table
from adnanny_eval.regression import regression_table
from adnanny_eval.report import ComparisonReport
from adnanny_eval.sample import make_sample_datasets

__all__ = ["PAPER_TABLE8", "run_demo", "sample_judgments", "sample_querygen"]

# Table 8 of the paper (DeepSeek-R1 baseline, AdNanny multi-task, AdNanny + public data).
PAPER_TABLE8: dict[str, list] = {
    "benchmark": [
        "anli_r3",
        "arc_challenge",
        "gsm8k_chain_of_thought",
        "hellaswag",
        "humaneval",
        "livecodebench",
        "math",
        "mbpp",
        "mgsm_chain_of_thought_en",
        "mgsm_chain_of_thought_zh",
        "mmmlu/humanities",
        "mmmlu/other",
        "mmmlu/social_sciences",
        "mmmlu/STEM",
        "openbookqa",
        "piqa",
        "winogrande",
        "toxigen",
    ],
    "DeepSeek-R1": [
        "0.694",
        "0.961",
        "0.948",
        "0.853",
        "0.841",
        "0.609",
        "0.847",
        "0.916",
        "0.956",
        "0.908",
        "0.798",
        "0.889",
        "0.917",
        "0.869",
        "0.940",
        "0.936",
        "0.853",
        "0.862",
    ],
    "AdNanny (multi-task finetuned)": [
        "0.658",
        "0.952",
        "0.951",
        "0.841",
        "0.872",
        "0.445",
        "0.803",
        "0.867",
        "0.960",
        "0.928",
        "0.779",
        "0.877",
        "0.902",
        "0.843",
        "0.926",
        "0.917",
        "0.833",
        "0.396",
    ],
    "AdNanny (+ public finetuned)": [
        "0.699",
        "0.961",
        "0.952",
        "0.872",
        "0.872",
        "0.602",
        "0.831",
        "0.895",
        "0.956",
        "0.916",
        "0.797",
        "0.883",
        "0.915",
        "0.862",
        "0.942",
        "0.933",
        "0.841",
        "0.871",
    ],
}

_REASONS = {
    "win": [
        "names the exact product the query asks for",
        "explains the location mismatch correctly",
        "catches the misleading price claim",
        "more specific about user intent",
    ],
    "loss": [
        "misses a brand-policy violation",
        "over-flags fair matches as bad",
        "hallucinates an ad attribute",
    ],
    "tie": ["both correct", "both miss the nuance"],
}


def sample_judgments(seed: int = 0, n: int = 240) -> pl.DataFrame:
    """Seeded pairwise judgments (candidate vs production) with categories and reasons."""
    rng = np.random.default_rng(seed + 7)
    cats = rng.choice(["relevance", "policy", "writing"], size=n, p=[0.5, 0.2, 0.3])
    probs = {"relevance": [0.52, 0.30, 0.18], "policy": [0.35, 0.50, 0.15], "writing": [0.45, 0.35, 0.20]}
    outcomes = [rng.choice(["win", "tie", "loss"], p=probs[c]) for c in cats]
    reasons = [rng.choice(_REASONS[o]) for o in outcomes]
    return pl.DataFrame(
        {"id": [f"j-{i:04d}" for i in range(n)], "category": cats, "outcome": outcomes, "reason": reasons}
    )


def sample_querygen() -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Table 7's queries (three models) plus a second keyword; clicked queries; distractor ads."""
    kw1 = "clt airport parking promo code"
    ad1 = "CLT Airport Parking - Reserve online and save with promo codes at Charlotte Douglas decks and lots"
    kw2 = "running shoes sale"
    ad2 = "Running Shoes Sale - Top brands up to 40% off, free shipping and easy returns"
    gen = {
        "DeepSeek-R1": [
            (kw1, ad1, q)
            for q in [
                "clt airport parking coupon code discount",
                "clt airport parking coupon code aaa",
                "clt airport parking groupon promo code",
                "clt airport parking promo code for veterans",
                "clt airport parking corporate discount code",
            ]
        ]
        + [
            (kw2, ad2, q)
            for q in ["running shoes sale", "running shoes on sale", "running shoe sale discount"]
        ],
        "AdNanny-671B": [
            (kw1, ad1, q)
            for q in [
                "CLT airport parking reservations coupon code",
                "CLT economy parking lot coupons online",
                "CLT terminal deck parking weekend specials",
                "CLT Express Deck reserved parking discount",
                "CLT business parking coupons with free shuttle",
            ]
        ]
        + [
            (kw2, ad2, q)
            for q in [
                "trail running shoes clearance",
                "womens marathon trainers discount",
                "best cushioned running shoes deals",
            ]
        ],
        "AdNanny-7B": [
            (kw1, ad1, q)
            for q in [
                "Charlotte Douglas parking promo for weekend trips",
                "Charlotte Douglas International Airport parking discounts this week",
                "Charlotte Douglas parking promo for disabled travelers",
                "Charlotte airport parking coupons with unlimited entry",
                "CLT airport parking loyalty program discounts for frequent flyers",
            ]
        ]
        + [
            (kw2, ad2, q)
            for q in [
                "where to buy marathon trainers cheap",
                "jogging sneakers clearance this weekend",
                "lightweight road running shoes for beginners on sale",
            ]
        ],
    }
    rows = [
        {"model": m, "keyword": k, "ad_text": a, "query": q} for m, items in gen.items() for k, a, q in items
    ]
    clicks = pl.DataFrame(
        {
            "keyword": [kw1] * 5 + [kw2] * 4,
            "query": [
                "clt parking coupon",
                "charlotte airport parking discount code",
                "clt long term parking deals",
                "clt parking reservation promo",
                "clt airport parking weekend rate",
                "running shoes sale",
                "buy running shoes online discount",
                "nike running shoes sale",
                "running shoes near me",
            ],
        }
    )
    distractors = [
        "Charlotte Hotels - Book downtown rooms with free breakfast",
        "Airport Shuttle Service - Door to door rides to CLT and RDU",
    ]
    return pl.DataFrame(rows), clicks, distractors


def _slug(name: str) -> str:
    return name.lower().replace(" ", "_")


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    n_resamples: int = 1000,
    querygen: bool = False,
    chart: bool = True,
) -> dict[str, Path]:
    """Write the demo report folder; returns the written paths by kind."""
    out = Path(out_dir)
    data = out / "data"
    comps: list[DatasetComparison] = []
    for ds in make_sample_datasets(seed):
        folder = data / _slug(ds.name)
        for role, frame in (("gold", ds.gold), ("baseline", ds.baseline), ("candidate", ds.candidate)):
            with atomic_open(folder / f"{role}.parquet", "wb") as fh:
                frame.write_parquet(fh)
        gold = read_table(folder / "gold.parquet")
        cand = read_table(folder / "candidate.parquet")
        base = read_table(folder / "baseline.parquet")
        views = ("bad", "fair", "location", "quality") if ds.kind == "query_ad" else ("ad-user",)
        for view in views:
            col = {"location": "location_label", "quality": "quality_label"}.get(view, "label")
            comps.append(
                compare_tables(
                    ds.name,
                    view,
                    gold,
                    cand,
                    base,
                    gold_col=col,
                    pred_col=col,
                    sources={r: str(folder / f"{r}.parquet") for r in ("gold", "candidate", "baseline")},
                    n_resamples=n_resamples,
                    seed=seed,
                )
            )
    order = {"bad": 0, "fair": 1, "location": 2, "quality": 3, "ad-user": 4}
    comps.sort(key=lambda c: order[c.view.name])
    report = ComparisonReport(tuple(comps), title="AdNanny evaluation report (built-in sample data)")
    paths = report.write(out, chart=chart)

    bench = pl.DataFrame(PAPER_TABLE8)
    with atomic_open(data / "benchmarks.csv", "wb") as fh:
        bench.write_csv(fh)
    reg = regression_table(bench)
    paths["regression_md"] = atomic_write_text(out / "regression.md", reg.to_markdown())
    paths["regression_csv"] = atomic_write_text(out / "regression.csv", reg.to_csv())
    paths["regression_json"] = atomic_write_text(out / "regression.json", reg.to_json())

    judgments = sample_judgments(seed)
    with atomic_open(data / "judgments.jsonl", "wb") as fh:
        judgments.write_ndjson(fh)
    gate = gate_report(judgments, GateRule(blocking_categories=()))
    paths["gate_md"] = atomic_write_text(out / "gate.md", gate.to_markdown())
    paths["gate_json"] = atomic_write_text(out / "gate.json", gate.to_json())

    sections = [
        report.to_markdown(
            preamble=(
                "Synthetic, seeded predictions shaped like the paper's datasets (rates of Tables 1–5); the "
                "numbers exercise the pipeline, they are not the paper's results. Files: `report.csv`, "
                "`report.json`, `bacc.png`, inputs under `data/`."
            )
        ).rstrip(),
        "",
        "## Benchmark regression (Table 8 layout, the paper's numbers)",
        "",
        reg.to_markdown().rstrip(),
        "",
        gate.to_markdown().rstrip(),
    ]
    if querygen:
        from adnanny_eval.encoders import minilm_encoder
        from adnanny_eval.querygen import querygen_table

        frame, clicks, distractors = sample_querygen()
        rows, md = querygen_table(frame, minilm_encoder(), clicks=clicks, ad_pool=distractors)
        paths["querygen_md"] = atomic_write_text(out / "querygen.md", md)
        sections += ["", "## Query generation (Table 6 metrics on Table 7's queries)", "", md.rstrip()]
    if chart:
        sections += ["", "![BACC per dataset](bacc.png)"]
    paths["markdown"] = atomic_write_text(out / "report.md", "\n".join(sections) + "\n")
    return paths
