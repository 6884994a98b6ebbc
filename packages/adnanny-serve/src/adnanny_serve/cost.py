"""Serving cost per one million labeled samples (paper §5.5, Table 10).

The paper prices AdNanny by measured GPU time: ``$ / 1M samples = (GPU $/s) / (samples/s) x 10^6``, and
the GPT-4o baseline by API price (input and output tokens at per-token prices, or a given $ per 1M
samples). The cost ratio is AdNanny's cost over the baseline's. Table 10 rounds costs to whole dollars
and the ratio to two decimals *from the unrounded costs*: 0.0027 / 20.22 x 1e6 = 133.53 -> 134,
133.53 / 592 = 0.2256 -> 0.23; 0.0027 / 8.79 x 1e6 = 307.17 -> 307, 307.17 / 592 = 0.5189 -> 0.52.
Library functions return unrounded floats; only the table printer rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adnanny_serve.errors import ConfigError

__all__ = ["CostRow", "baseline_cost_per_million", "cost_per_million", "cost_row", "format_cost_table"]

_MILLION = 1_000_000.0


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Check a price or rate, naming the parameter: a zero throughput would make cost infinite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"`{name}` must be a number; got {value!r}.") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        need = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ConfigError(f"`{name}` must be {need}; got {value!r}. Pass the measured value.")
    return v


def cost_per_million(gpu_dollars_per_s: float, samples_per_s: float) -> float:
    """$ per 1M samples for a GPU-priced deployment: GPU $/s divided by throughput, times 10^6."""
    price = _positive("gpu_dollars_per_s", gpu_dollars_per_s)
    rate = _positive("samples_per_s", samples_per_s)
    return price / rate * _MILLION


def baseline_cost_per_million(
    *,
    per_million: float | None = None,
    input_tokens: float | None = None,
    output_tokens: float | None = None,
    input_dollars_per_million_tokens: float | None = None,
    output_dollars_per_million_tokens: float | None = None,
) -> float:
    """$ per 1M samples of an API baseline, given directly or from token prices.

    With token prices, one sample costs ``in_tok x in_price/1e6 + out_tok x out_price/1e6``, so 1M samples
    cost ``in_tok x in_price + out_tok x out_price`` dollars.
    """
    token_args = (input_tokens, output_tokens, input_dollars_per_million_tokens, output_dollars_per_million_tokens)
    if per_million is not None:
        if any(a is not None for a in token_args):
            raise ConfigError(
                "give the baseline either as `baseline_per_million` or as token counts and prices, not both."
            )
        return _positive("baseline_per_million", per_million)
    if any(a is None for a in token_args):
        raise ConfigError(
            "the baseline needs `baseline_per_million`, or all four of `baseline_input_tokens`, "
            "`baseline_output_tokens`, `input_dollars_per_million_tokens`, "
            "`output_dollars_per_million_tokens`."
        )
    it = _positive("baseline_input_tokens", input_tokens, allow_zero=True)  # type: ignore[arg-type]
    ot = _positive("baseline_output_tokens", output_tokens, allow_zero=True)  # type: ignore[arg-type]
    ip = _positive("input_dollars_per_million_tokens", input_dollars_per_million_tokens, allow_zero=True)  # type: ignore[arg-type]
    op = _positive("output_dollars_per_million_tokens", output_dollars_per_million_tokens, allow_zero=True)  # type: ignore[arg-type]
    total = it * ip + ot * op
    if total <= 0:
        raise ConfigError("the baseline's token counts and prices give a cost of 0 $; check them.")
    return total


@dataclass(frozen=True)
class CostRow:
    """One row of Table 10 (unrounded)."""

    name: str
    cost_per_million: float
    cost_ratio: float
    samples_per_s: float | None = None
    gpu_dollars_per_s: float | None = None
    avg_input_tokens: float | None = None
    avg_output_tokens: float | None = None


def cost_row(
    name: str,
    *,
    gpu_dollars_per_s: float,
    samples_per_s: float,
    baseline_per_million: float,
    avg_input_tokens: float | None = None,
    avg_output_tokens: float | None = None,
) -> CostRow:
    """Cost and cost ratio of one deployment against a baseline's $ per 1M samples."""
    c = cost_per_million(gpu_dollars_per_s, samples_per_s)
    base = _positive("baseline_per_million", baseline_per_million)
    return CostRow(name, c, c / base, samples_per_s, gpu_dollars_per_s, avg_input_tokens, avg_output_tokens)


def format_cost_table(rows: list[CostRow], baseline_name: str, baseline_per_million: float) -> str:
    """Table 10's layout as text: costs in whole dollars, ratios with two decimals."""

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    head = ["Model", "Avg in tok", "Avg out tok", "GPU $/s", "samples/s", "$ / 1M samples", "cost ratio"]
    lines = [[baseline_name, "—", "—", "—", "—", f"{baseline_per_million:.0f}", "1.00"]]
    for r in rows:
        lines.append([
            r.name, fmt(r.avg_input_tokens, ".0f"), fmt(r.avg_output_tokens, ".0f"),
            fmt(r.gpu_dollars_per_s, ".4g"), fmt(r.samples_per_s, ".2f"),
            f"{r.cost_per_million:.0f}", f"{r.cost_ratio:.2f}",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)
