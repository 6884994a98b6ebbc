"""BACC bar charts (candidate vs baseline per dataset, one panel per view) — matplotlib, Agg, lazy.

matplotlib is imported only here and only when a chart is drawn, with the non-interactive Agg backend, so
`import adnanny_eval` stays light and charts render on headless machines.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from adnanny_eval.io import atomic_open

if TYPE_CHECKING:
    from adnanny_eval.report import ComparisonReport

__all__ = ["bacc_bar_chart", "render_bacc_png"]

_BASE_COLOR = "#9aa5b1"
_CAND_COLOR = "#1f6feb"


def _bars(ax, x, width: float, values, lows, highs, color: str, label: str) -> None:  # noqa: ANN001
    """Grouped bars in percent with CI whiskers; NaN (undefined BACC) draws as an empty slot."""
    import numpy as np

    vals = np.array(values, dtype=float) * 100  # [datasets]
    err = np.array(
        [vals - np.array(lows, dtype=float) * 100, np.array(highs, dtype=float) * 100 - vals]
    )  # [2, d]
    err = np.where(np.isnan(err), 0, err)
    ax.bar(
        x,
        np.nan_to_num(vals),
        width,
        color=color,
        label=label,
        yerr=err,
        capsize=3,
        error_kw={"elinewidth": 1, "ecolor": "#333333"},
    )


def bacc_bar_chart(report: ComparisonReport, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Draw BACC per dataset (percent) with bootstrap CI whiskers; one panel per view; write PNG atomically."""
    target = Path(path)
    data = render_bacc_png(report, dpi=dpi)
    with atomic_open(target, "wb") as fh:
        fh.write(data)
    return target


def render_bacc_png(report: ComparisonReport, *, dpi: int = 120) -> bytes:
    """The BACC chart as PNG bytes: rendered in memory so a report folder is written only once all of
    its parts exist (a plotting failure must not leave Markdown/CSV/JSON without their chart)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    views = report.views()
    ncols = min(len(views), 3)
    nrows = math.ceil(len(views) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(views) :]:
        ax.set_visible(False)
    for ax, view in zip(axes.flat, views, strict=False):
        comps = report.by_view(view)
        x = np.arange(len(comps))
        has_base = any(c.baseline is not None for c in comps)
        width = 0.38 if has_base else 0.6

        def bars(offset, values, lows, highs, color, label, ax=ax, x=x, width=width):  # noqa: ANN001
            _bars(ax, x + offset, width, values, lows, highs, color, label)

        if has_base:
            base = [c.baseline.bacc if c.baseline is not None else math.nan for c in comps]
            blo = [
                c.ci.baseline[0] if c.ci and c.ci.baseline else b for c, b in zip(comps, base, strict=True)
            ]
            bhi = [
                c.ci.baseline[1] if c.ci and c.ci.baseline else b for c, b in zip(comps, base, strict=True)
            ]
            bars(-width / 2, base, blo, bhi, _BASE_COLOR, comps[0].baseline_name)
        cand = [c.candidate.bacc for c in comps]
        clo = [c.ci.candidate[0] if c.ci else v for c, v in zip(comps, cand, strict=True)]
        chi = [c.ci.candidate[1] if c.ci else v for c, v in zip(comps, cand, strict=True)]
        bars(width / 2 if has_base else 0.0, cand, clo, chi, _CAND_COLOR, comps[0].candidate_name)
        finite = [v * 100 for v in cand + (base if has_base else []) if not math.isnan(v)]
        low = max(0.0, (min(finite) if finite else 50.0) - 10)
        ax.set_ylim(math.floor(low / 5) * 5, 100)
        ax.set_xticks(x, [c.dataset.replace("Dataset ", "") for c in comps])
        ax.set_title(view if view == "ad-user" else f"{view} view", fontsize=11)
        ax.set_ylabel("BACC (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False)
    fig.suptitle("")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()
