"""Benchmark regression table (Table 8): per-benchmark scores of a baseline and candidates.

Each candidate cell shows the score and its relative change w.r.t. the baseline,
``(candidate − baseline) / baseline × 100`` (the paper's caption says "percentage points" but every number
in it is a relative change: 0.694 → 0.658 is −5.19%). The ``Avg.`` row is the plain mean of each column.

Rounding follows the paper so its table reproduces exactly: scores are read as decimals, the average is
rounded half-up to the table's precision (3 decimals), and the Avg row's relative change is computed from
those displayed averages (0.867 → 0.819 is −5.54%; from the unrounded means 0.8665 → 0.8194 it would be
−5.43%). Pass ``avg_change_from_rounded=False`` for the unrounded reading.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import polars as pl

from adnanny_eval.errors import AdNannyEvalError
from adnanny_eval.report import markdown_table

__all__ = ["RegressionTable", "regression_table"]


def _dec(value: Any, where: str) -> Decimal:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise AdNannyEvalError(f"{where} is missing; every benchmark needs a score for every model")
    try:
        d = Decimal(str(value).strip())
    except Exception as exc:  # decimal.InvalidOperation
        raise AdNannyEvalError(f"{where} is {value!r}, not a number") from exc
    if not d.is_finite():
        raise AdNannyEvalError(f"{where} is {value!r}, not a finite number")
    return d


def _signed_pct(x: float) -> str:
    text = f"{abs(x):.2f}%"
    if text == "0.00%":
        return text
    return ("+" if x > 0 else "−") + text


@dataclass(frozen=True)
class RegressionTable:
    """Scores (as given), relative changes (percent) and the Avg row; render as Markdown/CSV/JSON."""

    benchmarks: tuple[str, ...]
    models: tuple[str, ...]  # models[0] is the baseline
    scores: dict[str, tuple[float, ...]]  # model -> per-benchmark score
    changes: dict[str, tuple[float, ...]]  # candidate -> relative change % per benchmark
    averages: dict[str, float]  # model -> Avg (rounded to `decimals`)
    avg_changes: dict[str, float]  # candidate -> relative change % of the Avg row
    decimals: int = 3

    @property
    def baseline(self) -> str:
        return self.models[0]

    def to_markdown(self) -> str:
        d = self.decimals
        rows = []
        for i, bench in enumerate(self.benchmarks):
            row = [bench, f"{self.scores[self.baseline][i]:.{d}f}"]
            row += [f"{self.scores[m][i]:.{d}f} ({_signed_pct(self.changes[m][i])})" for m in self.models[1:]]
            rows.append(row)
        avg = ["**Avg.**", f"**{self.averages[self.baseline]:.{d}f}**"]
        avg += [f"**{self.averages[m]:.{d}f}** ({_signed_pct(self.avg_changes[m])})" for m in self.models[1:]]
        rows.append(avg)
        return markdown_table(["Dataset", *self.models], rows) + "\n"

    def to_frame(self) -> pl.DataFrame:
        cols: dict[str, list[Any]] = {"benchmark": [*self.benchmarks, "Avg."]}
        for m in self.models:
            cols[m] = [*self.scores[m], self.averages[m]]
            if m != self.baseline:
                cols[f"{m} rel. change %"] = [round(x, 2) for x in (*self.changes[m], self.avg_changes[m])]
        return pl.DataFrame(cols)

    def to_csv(self) -> str:
        buf = io.StringIO()
        self.to_frame().write_csv(buf)
        return buf.getvalue()

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "models": list(self.models),
            "benchmarks": list(self.benchmarks),
            "scores": {m: list(v) for m, v in self.scores.items()},
            "relative_change_percent": {m: [round(x, 2) for x in v] for m, v in self.changes.items()},
            "average": self.averages,
            "average_relative_change_percent": {m: round(v, 2) for m, v in self.avg_changes.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def regression_table(
    frame: pl.DataFrame,
    *,
    benchmark_col: str = "benchmark",
    baseline: str | None = None,
    decimals: int = 3,
    avg_change_from_rounded: bool = True,
) -> RegressionTable:
    """Build Table 8 from a frame with one row per benchmark and one score column per model.

    The baseline is `baseline` or else the first model column; the others are candidates.
    """
    if benchmark_col not in frame.columns:
        raise AdNannyEvalError(
            f"no `{benchmark_col}` column (columns: {', '.join(frame.columns)}); pass the benchmark name "
            "column with `benchmark_col` (`--benchmark-col`)"
        )
    models = [c for c in frame.columns if c != benchmark_col]
    if len(models) < 2:
        raise AdNannyEvalError(f"need a baseline and at least one candidate column, got {models}")
    if baseline is not None:
        if baseline not in models:
            raise AdNannyEvalError(f"`baseline` {baseline!r} is not a column; choose one of {models}")
        models.remove(baseline)
        models.insert(0, baseline)
    if frame.height == 0:
        raise AdNannyEvalError("the benchmark table has no rows")
    benches = [str(b) for b in frame.get_column(benchmark_col).to_list()]
    dec: dict[str, list[Decimal]] = {
        m: [
            _dec(v, f"score of `{m}` on `{b}`")
            for v, b in zip(frame.get_column(m).to_list(), benches, strict=True)
        ]
        for m in models
    }
    base = dec[models[0]]
    for b, v in zip(benches, base, strict=True):
        if v == 0:
            raise AdNannyEvalError(
                f"baseline `{models[0]}` scores 0 on `{b}`; a relative change is undefined"
            )
    quantum = Decimal(1).scaleb(-decimals)
    averages_exact = {m: sum(v, Decimal(0)) / len(v) for m, v in dec.items()}
    averages_rounded = {m: a.quantize(quantum, rounding=ROUND_HALF_UP) for m, a in averages_exact.items()}
    avg_src = averages_rounded if avg_change_from_rounded else averages_exact
    changes = {
        m: tuple(float((c - b) / b * 100) for c, b in zip(dec[m], base, strict=True)) for m in models[1:]
    }
    avg_changes = {m: float((avg_src[m] - avg_src[models[0]]) / avg_src[models[0]] * 100) for m in models[1:]}
    return RegressionTable(
        benchmarks=tuple(benches),
        models=tuple(models),
        scores={m: tuple(float(x) for x in v) for m, v in dec.items()},
        changes=changes,
        averages={m: float(averages_rounded[m]) for m in models},
        avg_changes=avg_changes,
        decimals=decimals,
    )
