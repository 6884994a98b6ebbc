"""`adnanny-eval`: the paper's §5 metrics and tables from files.

Verbs: ``report`` (Tables 1–5 for one dataset: gold vs predictions, optional baseline), ``demo`` (a full
report folder from built-in sample data), ``querygen`` (Table 6), ``regression`` (Table 8) and ``gate``
(replacement decision from pairwise judgments). Errors print one line naming what to fix and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adnanny_eval.errors import AdNannyEvalError, DegenerateMetricWarning, ScoreSourceWarning

__all__ = ["build_parser", "main"]


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_clean(obj), indent=2, allow_nan=False))


def _cmd_report(args: argparse.Namespace) -> int:
    from adnanny_eval.compare import compare_tables
    from adnanny_eval.io import read_table
    from adnanny_eval.report import ComparisonReport
    from adnanny_eval.views import get_view

    view = get_view(
        args.view, defect=args.defect, field=args.field, values=args.values, rate_name=args.rate_name
    )
    name = args.name or Path(args.gold).stem
    comp = compare_tables(
        name,
        view,
        read_table(args.gold),
        read_table(args.pred),
        None if args.baseline is None else read_table(args.baseline),
        gold_col=args.gold_col,
        pred_col=args.pred_col,
        score_col=args.score_col,
        ignore_score=args.no_auc,
        parse_errors=args.parse_errors,
        sources={"gold": str(args.gold), "candidate": str(args.pred), "baseline": str(args.baseline)},
        candidate_name=args.candidate_name,
        baseline_name=args.baseline_name,
        n_resamples=args.n_resamples,
        seed=args.seed,
        level=args.level,
    )
    # Parse errors are stated on stderr too, so a script reading only the JSON's metrics still sees them.
    n_dropped = comp.candidate.n_dropped
    if comp.parse_errors == "drop" and n_dropped:
        print(
            f"adnanny-eval report: dropped {n_dropped} row(s) whose prediction did not parse "
            f"(--parse-errors drop); metrics cover {comp.candidate.n} row(s)",
            file=sys.stderr,
        )
    report = ComparisonReport((comp,), title=f"adnanny-eval report: {name} ({view.name} view)")
    if args.out is not None:
        paths = report.write(args.out, chart=not args.no_chart)
        if not args.json:
            print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if args.json:
        cand = comp.candidate.to_paper(view.rate_name)
        auc_source = comp.extra.get("auc_source", {})
        if comp.baseline is None:
            _print_json(
                {**cand, "parse_errors": comp.parse_errors, "auc_source": auc_source.get("candidate")}
            )
        else:
            _print_json(
                {
                    "candidate": cand,
                    "baseline": comp.baseline.to_paper(view.rate_name),
                    "delta": comp.delta(),
                    "bootstrap": None if comp.ci is None else comp.ci.to_dict(),
                    "parse_errors": comp.parse_errors,
                    "auc_source": auc_source,
                }
            )
    else:
        print(report.view_markdown(view.name))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from adnanny_eval.demo import run_demo

    start = time.perf_counter()
    paths = run_demo(args.out, seed=args.seed, n_resamples=args.n_resamples, querygen=args.querygen)
    if args.json:
        _print_json({k: str(v) for k, v in paths.items()})
    else:
        print(f"demo report written to {args.out} in {time.perf_counter() - start:.1f} s:")
        for kind, path in paths.items():
            print(f"  {kind:16s} {path}")
    return 0


def _cmd_querygen(args: argparse.Namespace) -> int:
    from adnanny_eval.encoders import minilm_encoder
    from adnanny_eval.io import atomic_write_text, read_table
    from adnanny_eval.querygen import querygen_table

    frame = read_table(args.queries)
    clicks = read_table(args.clicks) if args.clicks else None
    pool: list[str] = []
    if args.ad_pool:
        pool_frame = read_table(args.ad_pool)
        if "ad_text" not in pool_frame.columns:
            raise AdNannyEvalError(
                f"`{args.ad_pool}` needs an `ad_text` column (columns: {pool_frame.columns})"
            )
        pool = [str(x) for x in pool_frame.get_column("ad_text").to_list()]
    rows, md = querygen_table(frame, minilm_encoder(), clicks=clicks, ad_pool=pool)
    payload = [r.to_dict() for r in rows]
    if args.out is not None:
        out = Path(args.out)
        atomic_write_text(out / "querygen.md", md)
        atomic_write_text(out / "querygen.json", json.dumps(_clean(payload), indent=2) + "\n")
    if args.json:
        _print_json(payload)
    else:
        print(md, end="")
    return 0


def _cmd_regression(args: argparse.Namespace) -> int:
    from adnanny_eval.io import atomic_write_text, read_table
    from adnanny_eval.regression import regression_table

    import polars as pl

    frame = read_table(args.scores)
    # Read scores as text so decimals stay exact (0.8665 must round half-up to 0.867, as in Table 8).
    frame = frame.with_columns(pl.exclude(args.benchmark_col).cast(pl.String))
    table = regression_table(
        frame,
        benchmark_col=args.benchmark_col,
        baseline=args.baseline,
        decimals=args.decimals,
        avg_change_from_rounded=not args.exact_average_change,
    )
    if args.out is not None:
        out = Path(args.out)
        atomic_write_text(out / "regression.md", table.to_markdown())
        atomic_write_text(out / "regression.csv", table.to_csv())
        atomic_write_text(out / "regression.json", table.to_json())
    if args.json:
        _print_json(table.to_dict())
    else:
        print(table.to_markdown(), end="")
    return 0


_GATE_KEYS = (
    "min_judgments",
    "confidence",
    "min_win_rate_lcb",
    "max_category_loss_share",
    "min_category_judgments",
    "blocking_categories",
)


def _cmd_gate(args: argparse.Namespace) -> int:
    import tomllib

    from adnanny_eval.gate import GateRule, gate_report
    from adnanny_eval.io import atomic_write_text

    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            with open(args.config, "rb") as fh:
                cfg = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AdNannyEvalError(f"cannot read `--config` {args.config}: {exc}") from exc
        unknown = sorted(set(cfg) - set(_GATE_KEYS))
        if unknown:
            raise AdNannyEvalError(
                f"`{args.config}`: unknown key(s) {unknown}; known keys: {', '.join(_GATE_KEYS)}"
            )
        values.update(cfg)
    for key in _GATE_KEYS:
        flag = getattr(args, key)
        if flag is not None:
            values[key] = flag
    rule = GateRule(**values)  # validates every key (types and ranges) and splits "a,b" categories
    rep = gate_report(args.judgments, rule, outcome_col=args.outcome_col)
    if args.out is not None:
        out = Path(args.out)
        atomic_write_text(out / "gate.md", rep.to_markdown())
        atomic_write_text(out / "gate.json", rep.to_json())
    if args.json:
        print(rep.to_json(), end="")
    else:
        print(rep.to_markdown(), end="")
    return 3 if args.fail_on_hold and rep.decision == "hold" else 0


def _output_flags(p: argparse.ArgumentParser, json_what: str, files: str) -> None:
    """`--json` and `--out`, shared by the table verbs so their help reads the same."""
    p.add_argument("--json", action="store_true", help=f"print JSON instead of Markdown: {json_what}")
    p.add_argument("--out", type=Path, help=f"also write {files} into this folder (atomically)")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (also used by the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="adnanny-eval",
        description="The AdNanny paper's §5 metrics and tables: defect views, BACC/AUC reports with bootstrap "
        "CIs, query-generation metrics, benchmark regression, replacement gate.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    rp = sub.add_parser(
        "report",
        help="metrics of predictions vs gold under one defect view (Tables 1–5)",
        description="Join GOLD and PRED on `id` and print the paper's metric row (percent). "
        "Files are Parquet, CSV or JSONL (by extension).",
    )
    rp.add_argument("--gold", required=True, type=Path, help="gold labels file (columns `id`, `label`)")
    rp.add_argument(
        "--pred", required=True, type=Path, help="candidate predictions (`id`, `label`, optional `score`)"
    )
    rp.add_argument(
        "--view",
        required=True,
        help="bad | fair | location | quality | ad-user | defect (generic: with --defect VALUES [--field F])",
    )
    rp.add_argument(
        "--defect",
        help="comma-separated defect values of the generic view (e.g. bad,fair or 0); every other label "
        "is a non-defect unless --values lists the field's values",
    )
    rp.add_argument(
        "--field",
        help="label field the view reads: the default of --gold-col/--pred-col and the `label_probs` key "
        "(default: the view's field, `label` for the generic view)",
    )
    rp.add_argument(
        "--values", help="generic view: every value of the field, comma-separated (others are errors)"
    )
    rp.add_argument(
        "--rate-name", choices=("DR", "RR"), help="generic view: name of the defect rate (default DR)"
    )
    rp.add_argument(
        "--parse-errors",
        choices=("wrong", "drop"),
        default="wrong",
        help="rows whose prediction has `parse_error` set or no label: wrong (default) = a miss of its gold "
        "class (Model DR then depends on gold); drop = removed from gold and every model. The parse-error "
        "rate is reported either way",
    )
    rp.add_argument(
        "--baseline", type=Path, help="baseline predictions: adds baseline and Delta rows + paired CIs"
    )
    rp.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object keyed by the paper's column names (percent) plus n, n_defect; "
        "with --baseline: {candidate, baseline, delta, bootstrap}",
    )
    rp.add_argument("--out", type=Path, help="also write report.md/.csv/.json and bacc.png into this folder")
    rp.add_argument("--gold-col", help="gold label column (default: the view's field)")
    rp.add_argument("--pred-col", help="predicted label column (default: the view's field)")
    rp.add_argument(
        "--score-col",
        help="P(non-defect) column for AUC; must exist, and must not be another view's column (`score` is "
        "the bad view's). Default: `label_probs` when present, else the view's own column (`score` for "
        "bad/ad-user, `score_<field>` for location/quality)",
    )
    rp.add_argument("--no-auc", action="store_true", help="ignore any score column (no AUC)")
    rp.add_argument("--name", help="dataset name in tables (default: gold file stem)")
    rp.add_argument("--candidate-name", default="candidate")
    rp.add_argument("--baseline-name", default="baseline")
    rp.add_argument(
        "--n-resamples", type=int, default=1000, help="bootstrap resamples for BACC CIs (0: none)"
    )
    rp.add_argument("--seed", type=int, default=0, help="bootstrap seed (recorded in the output)")
    rp.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    rp.add_argument("--no-chart", action="store_true", help="skip the PNG with --out")
    rp.set_defaults(func=_cmd_report)

    dp = sub.add_parser(
        "demo",
        help="write a full report folder from built-in seeded sample data",
        description="Tables 1–5 (+ bootstrap CIs, CSV, JSON, PNG), Table 8 and a gate report "
        "from built-in sample predictions.",
    )
    dp.add_argument("--out", required=True, type=Path, help="report folder to write")
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--n-resamples", type=int, default=1000)
    dp.add_argument("--querygen", action="store_true", help="add Table 6 metrics (loads MiniLM; needs torch)")
    dp.add_argument("--json", action="store_true", help="print the written paths as JSON")
    dp.set_defaults(func=_cmd_demo)

    qp = sub.add_parser(
        "querygen",
        help="Table 6 metrics of generated queries (MiniLM embeddings, BM25)",
        description="Relevance, Diversity, Difficulty, Click Attribute Ratio (see the README).",
    )
    qp.add_argument("--queries", required=True, type=Path, help="columns keyword, ad_text, query [, model]")
    qp.add_argument("--clicks", type=Path, help="historical clicked queries: columns keyword, query")
    qp.add_argument("--ad-pool", type=Path, help="extra distractor ads for the BM25 matcher: column ad_text")
    _output_flags(qp, "a list of Table 6 rows (fractions)", "querygen.md/.json")
    qp.set_defaults(func=_cmd_querygen)

    gp = sub.add_parser(
        "regression",
        help="Table 8: benchmark scores -> relative change % and Avg row",
        description="One row per benchmark, one score column per model; the first model "
        "column (or --baseline) is the baseline.",
    )
    gp.add_argument("--scores", required=True, type=Path)
    gp.add_argument("--baseline", help="baseline column (default: first model column)")
    gp.add_argument("--benchmark-col", default="benchmark")
    gp.add_argument("--decimals", type=int, default=3)
    gp.add_argument(
        "--exact-average-change",
        action="store_true",
        help="Avg change from unrounded means (default: from displayed averages, as the paper)",
    )
    _output_flags(gp, "scores, relative changes (%) and the Avg row", "regression.md/.csv/.json")
    gp.set_defaults(func=_cmd_regression)

    tp = sub.add_parser(
        "gate",
        help="replacement decision (proceed/hold) from win/tie/loss judgments",
        description="Aggregate pairwise judgments (columns outcome, optional category, reason, "
        "id) with the rule documented in the README. Rule keys can come from "
        "--config FILE.toml; flags of the same name override it.",
    )
    tp.add_argument("--judgments", required=True, type=Path)
    tp.add_argument("--config", type=Path, help="TOML with rule keys (min_judgments, confidence, ...)")
    tp.add_argument("--outcome-col", default="outcome")
    tp.add_argument("--min-judgments", dest="min_judgments", type=int)
    tp.add_argument("--confidence", type=float)
    tp.add_argument("--min-win-rate-lcb", dest="min_win_rate_lcb", type=float)
    tp.add_argument("--max-category-loss-share", dest="max_category_loss_share", type=float)
    tp.add_argument("--min-category-judgments", dest="min_category_judgments", type=int)
    tp.add_argument("--blocking-categories", dest="blocking_categories", help="comma-separated, e.g. policy")
    tp.add_argument(
        "--fail-on-hold", action="store_true", help="exit with status 3 when the decision is hold"
    )
    _output_flags(tp, "the decision, counts, categories and checks", "gate.md/.json")
    tp.set_defaults(func=_cmd_gate)

    from adnanny_eval.bench.cli import add_bench_parser  # `bench` verb ([bench] extra); heavy imports stay lazy

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `adnanny-eval` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DegenerateMetricWarning)
        warnings.simplefilter("always", ScoreSourceWarning)
        try:
            status = int(args.func(args))
        except AdNannyEvalError as exc:
            print(f"adnanny-eval {args.verb}: error: {exc}", file=sys.stderr)
            status = 2
    for w in caught:  # one readable line per warning instead of Python's file:line format
        if issubclass(w.category, (DegenerateMetricWarning, ScoreSourceWarning)):
            print(f"adnanny-eval {args.verb}: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
