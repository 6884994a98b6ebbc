"""Render comparisons like the paper's Tables 1–5 (Markdown), plus CSV, JSON and a BACC bar chart.

Tables print percent with two decimals, as the paper does; the Dataset cell carries the gold defect rate
(``Dataset A DR 56.62``). Undefined metrics print ``n/a`` in Markdown, empty in CSV and ``null`` in JSON
(JSON has no NaN). The bootstrap block under each table gives the BACC intervals, resamples and seed.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from adnanny_eval.__about__ import __version__
from adnanny_eval.compare import DatasetComparison, table_columns
from adnanny_eval.io import atomic_write_bytes, atomic_write_text
from adnanny_eval.metrics import METRIC_NAMES

__all__ = ["ComparisonReport", "fmt", "markdown_table"]

_TITLES = {
    "bad": "Query–ad relevance (Bad defect view)",
    "fair": "Query–ad relevance (Fair defect view)",
    "location": "Query–ad location labeling metrics",
    "quality": "Query–ad quality labeling metrics",
    "ad-user": "Ad–user relevance labeling metrics",
}


def view_title(view: Any) -> str:
    """Heading of a view's table: the paper's wording for built-in views, the definition for others."""
    return _TITLES.get(view.name) or f"Defect view {view.title}"


def parse_error_line(comps: Sequence[DatasetComparison]) -> str:
    """One line under a table: each model's parse-error count and rate, and how they were counted."""
    parts = []
    any_errors = False
    for c in comps:
        models = [(c.candidate_name, c.candidate)]
        if c.baseline is not None:
            models.insert(0, (c.baseline_name, c.baseline))
        total = c.candidate.n + c.candidate.n_dropped
        cells = ", ".join(
            f"{name} {m.n_parse_errors} ({fmt(m.parse_error_rate * 100)}%)" for name, m in models
        )
        any_errors |= any(m.n_parse_errors for _, m in models)
        dropped = f"; {c.candidate.n_dropped} row(s) dropped" if c.parse_errors == "drop" else ""
        parts.append(f"{c.dataset}: {cells} of {total}{dropped}")
    if not any_errors:
        return "Parse errors: none."
    mode = comps[0].parse_errors
    how = (
        "each unparsed row counts as a miss of its gold class, so Model DR/RR depends on gold"
        if mode == "wrong"
        else "unparsed rows were dropped from gold and every model (same ids for all)"
    )
    return f"Parse errors (`--parse-errors {mode}`: {how}): " + "; ".join(parts) + "."


def fmt(value: float | int | None, digits: int = 2) -> str:
    """Percent cell: two decimals, ``n/a`` for undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    align = ["---"] * len(header)
    for j in range(len(header)):
        if rows and all(_numeric(r[j]) for r in rows if r[j]):
            align[j] = "---:"
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text.replace("*", "").replace("%", "").replace("−", "-").split(" ")[0])
    except ValueError:
        return text == "n/a"
    return True


@dataclass(frozen=True)
class ComparisonReport:
    """A set of dataset comparisons across views — what `adnanny-eval report`/`demo` write."""

    comparisons: tuple[DatasetComparison, ...]
    title: str = "AdNanny evaluation report"

    def views(self) -> list[str]:
        seen: list[str] = []
        for c in self.comparisons:
            if c.view.name not in seen:
                seen.append(c.view.name)
        return seen

    def by_view(self, view: str) -> list[DatasetComparison]:
        return [c for c in self.comparisons if c.view.name == view]

    # ---- Markdown -------------------------------------------------------------------------------------
    def view_markdown(self, view: str) -> str:
        comps = self.by_view(view)
        v = comps[0].view
        with_auc = any(c.candidate.auc is not None for c in comps)
        cols = table_columns(v, with_auc=with_auc)
        # The parse-error rate sits beside the metrics it shaped whenever a model had any.
        with_parse = any(m is not None and m.n_parse_errors for c in comps for m in (c.candidate, c.baseline))
        pcol = ["Parse err."] if with_parse else []
        rows: list[list[str]] = []
        for c in comps:
            label = f"{c.dataset} {v.rate_name} {fmt(c.rate * 100)}"
            cand = c.candidate.to_paper(v.rate_name)
            cand_p = [fmt(cand["parse_error_rate"])] if with_parse else []
            if c.baseline is not None:
                base = c.baseline.to_paper(v.rate_name)
                base_p = [fmt(base["parse_error_rate"])] if with_parse else []
                rows.append([label, c.baseline_name, *(fmt(base.get(k)) for k in cols), *base_p])  # type: ignore[arg-type]
                rows.append(["", c.candidate_name, *(fmt(cand.get(k)) for k in cols), *cand_p])  # type: ignore[arg-type]
                delta = c.delta()
                rows.append(["", "Delta", *(fmt(delta.get(k)) for k in cols), *([""] if with_parse else [])])
            else:
                rows.append([label, c.candidate_name, *(fmt(cand.get(k)) for k in cols), *cand_p])  # type: ignore[arg-type]
        parts = [
            f"### {view_title(v)}",
            "",
            markdown_table(["Dataset", "Model", *cols, *pcol], rows),
            "",
            parse_error_line(comps),
        ]
        for c in comps:
            parts += [f"Note: {n}" for n in c.extra.get("notes", [])]
        ci_rows = []
        ci_info = None
        for c in comps:
            if c.ci is None:
                continue
            ci_info = c.ci
            pct = c.ci.to_dict()
            row = [
                c.dataset,
                f"{fmt(c.candidate.bacc * 100)} [{fmt(pct['candidate'][0])}, {fmt(pct['candidate'][1])}]",
            ]
            if c.baseline is not None and pct["baseline"] is not None:
                row.insert(
                    1, f"{fmt(c.baseline.bacc * 100)} [{fmt(pct['baseline'][0])}, {fmt(pct['baseline'][1])}]"
                )
                d = c.delta()["BACC"]
                row.append(f"{fmt(d)} [{fmt(pct['delta'][0])}, {fmt(pct['delta'][1])}]")
            ci_rows.append(row)
        if ci_rows and ci_info is not None:
            lvl = f"{ci_info.level * 100:g}%"
            degenerate = sum(c.ci.n_degenerate for c in comps if c.ci is not None)
            first = comps[0]
            head = ["Dataset"]
            if first.baseline is not None:
                head.append(f"BACC {first.baseline_name} [{lvl} CI]")
            head.append(f"BACC {first.candidate_name} [{lvl} CI]")
            if first.baseline is not None:
                head.append(f"Δ BACC [{lvl} CI]")
            parts += [
                "",
                f"BACC with {lvl} paired bootstrap intervals "
                f"({ci_info.n_resamples} resamples, seed {ci_info.seed}"
                + (f"; {degenerate} resample(s) with one gold class dropped" if degenerate else "")
                + "):",
                "",
                markdown_table(head, ci_rows),
            ]
        return "\n".join(parts)

    def to_markdown(self, *, preamble: str = "") -> str:
        parts = [f"# {self.title}", ""]
        if preamble:
            parts += [preamble, ""]
        parts.append(
            "Percent; positive = non-defect, negative = defect; DR/RR = gold defect rate, Model DR/RR = "
            "share the model flags; Delta = candidate − baseline (points)."
        )
        for view in self.views():
            parts += ["", self.view_markdown(view)]
        return "\n".join(parts) + "\n"

    # ---- CSV / JSON -------------------------------------------------------------------------------------
    def to_frame(self) -> pl.DataFrame:
        """Long table: one row per (view, dataset, model|Delta), percent values, paper column names."""
        metric_cols = list(METRIC_NAMES[2:])  # the rates get generic columns: DR or RR by `rate_name`
        records: list[dict[str, Any]] = []
        for c in self.comparisons:
            rn = c.view.rate_name
            pct = c.ci.to_dict() if c.ci is not None else None

            def rec(
                model: str,
                values: dict[str, Any],
                ci: list[float | None] | None,
                role: str = "",
                c: DatasetComparison = c,
                rn: str = rn,
            ) -> dict[str, Any]:
                r: dict[str, Any] = {
                    "view": c.view.name,
                    "dataset": c.dataset,
                    "model": model,
                    "rate_name": rn,
                    "rate": c.rate * 100,
                    "model_rate": values.get(f"Model {rn}"),
                }
                r.update({k: values.get(k) for k in metric_cols})
                r["parse_errors"] = c.parse_errors
                r["n_parse_errors"] = values.get("n_parse_errors")
                r["parse_error_rate"] = values.get("parse_error_rate")
                r["n_dropped"] = c.candidate.n_dropped
                r["auc_source"] = c.extra.get("auc_source", {}).get(role)
                r["BACC_ci_low"] = None if ci is None else ci[0]
                r["BACC_ci_high"] = None if ci is None else ci[1]
                r["n"] = c.candidate.n
                r["n_defect"] = c.candidate.n_defect
                # The bootstrap settings travel with every row, so the CSV alone reproduces the intervals.
                r["bootstrap_resamples"] = None if c.ci is None else c.ci.n_resamples
                r["bootstrap_seed"] = None if c.ci is None else c.ci.seed
                r["bootstrap_level"] = None if c.ci is None else c.ci.level
                r["bootstrap_degenerate"] = None if c.ci is None else c.ci.n_degenerate
                return r

            if c.baseline is not None:
                records.append(
                    rec(
                        c.baseline_name, c.baseline.to_paper(rn), pct["baseline"] if pct else None, "baseline"
                    )
                )
            records.append(
                rec(
                    c.candidate_name, c.candidate.to_paper(rn), pct["candidate"] if pct else None, "candidate"
                )
            )
            if c.baseline is not None:
                records.append(rec("Delta", c.delta(), pct["delta"] if pct else None))
        schema = {
            "view": pl.String,
            "dataset": pl.String,
            "model": pl.String,
            "rate_name": pl.String,
            "rate": pl.Float64,
            "model_rate": pl.Float64,
            **{k: pl.Float64 for k in metric_cols},
            "parse_errors": pl.String,
            "n_parse_errors": pl.Int64,
            "parse_error_rate": pl.Float64,
            "n_dropped": pl.Int64,
            "auc_source": pl.String,
            "BACC_ci_low": pl.Float64,
            "BACC_ci_high": pl.Float64,
            "n": pl.Int64,
            "n_defect": pl.Int64,
            "bootstrap_resamples": pl.Int64,
            "bootstrap_seed": pl.Int64,
            "bootstrap_level": pl.Float64,
            "bootstrap_degenerate": pl.Int64,
        }
        frame = pl.DataFrame(records, schema=schema)
        return frame.with_columns(pl.col(pl.Float64).fill_nan(None))

    def to_csv(self) -> str:
        buf = io.StringIO()
        self.to_frame().write_csv(buf, float_precision=4)
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "adnanny_eval_version": __version__,
            "units": "percent",
            "views": {v: [c.to_dict() for c in self.by_view(v)] for v in self.views()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    # ---- folder -----------------------------------------------------------------------------------------
    def write(
        self, out_dir: str | os.PathLike[str], *, stem: str = "report", chart: bool = True
    ) -> dict[str, Path]:
        """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` and ``bacc.png`` atomically into `out_dir`."""
        # Render every part first, then write: a failure while rendering leaves no partial folder behind.
        out = Path(out_dir)
        parts: dict[str, tuple[Path, str | bytes]] = {
            "markdown": (out / f"{stem}.md", self.to_markdown()),
            "csv": (out / f"{stem}.csv", self.to_csv()),
            "json": (out / f"{stem}.json", self.to_json()),
        }
        if chart:
            from adnanny_eval.plots import render_bacc_png

            parts["png"] = (out / "bacc.png", render_bacc_png(self))
        paths: dict[str, Path] = {}
        for kind, (path, content) in parts.items():
            if isinstance(content, bytes):
                paths[kind] = atomic_write_bytes(path, content)
            else:
                paths[kind] = atomic_write_text(path, content)
        return paths
