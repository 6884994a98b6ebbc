"""Cost model: reproduces paper Table 10 from its inputs."""

from __future__ import annotations

import json

import pytest
from adnanny_serve.cli import main
from adnanny_serve.cost import baseline_cost_per_million, cost_per_million, cost_row, format_cost_table
from adnanny_serve.errors import ConfigError


@pytest.mark.parametrize(("sps", "cost", "ratio"), [(20.22, 134, 0.23), (8.79, 307, 0.52)])
def test_table10_rows(sps: float, cost: int, ratio: float) -> None:
    c = cost_per_million(0.0027, sps)
    assert round(c) == cost
    assert round(c / 592, 2) == ratio


def test_cli_json_reproduces_table10(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--gpu-dollars-per-s", "0.0027", "--samples-per-s", "20.22",
                 "--baseline-per-million", "592", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["cost_per_million"]) == 134 and round(out["cost_ratio"], 2) == 0.23
    assert main(["cost", "--gpu-dollars-per-s", "0.0027", "--samples-per-s", "8.79",
                 "--baseline-per-million", "592", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert round(out["cost_per_million"]) == 307 and round(out["cost_ratio"], 2) == 0.52


def test_baseline_from_token_prices(capsys: pytest.CaptureFixture[str]) -> None:
    # 1710 input tokens at $2.5 / 1M and 260 output tokens at $10 / 1M: 1M samples cost 4275 + 2600 dollars.
    assert baseline_cost_per_million(input_tokens=1710, output_tokens=260, input_dollars_per_million_tokens=2.5,
                                     output_dollars_per_million_tokens=10) == pytest.approx(6875.0)
    assert main(["cost", "--gpu-dollars-per-s", "0.0027", "--samples-per-s", "20.22", "--baseline-input-tokens",
                 "1710", "--baseline-output-tokens", "260", "--input-dollars-per-million-tokens", "2.5",
                 "--output-dollars-per-million-tokens", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cost_ratio"] == pytest.approx(133.531157 / 6875.0, rel=1e-6)


def test_bad_inputs_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="`samples_per_s` must be a finite number > 0; got 0"):
        cost_per_million(0.0027, 0)
    with pytest.raises(ConfigError, match="not both"):
        baseline_cost_per_million(per_million=592, input_tokens=10)
    with pytest.raises(ConfigError, match="`baseline_per_million`, or all four"):
        baseline_cost_per_million(input_tokens=10)
    assert main(["cost", "--gpu-dollars-per-s", "-1", "--samples-per-s", "3", "--baseline-per-million", "5"]) == 2
    assert "`gpu_dollars_per_s`" in capsys.readouterr().err


def test_table_text() -> None:
    rows = [cost_row("label only", gpu_dollars_per_s=0.0027, samples_per_s=20.22, baseline_per_million=592,
                     avg_input_tokens=1654, avg_output_tokens=21)]
    text = format_cost_table(rows, "GPT-4o", 592)
    assert "134" in text and "0.23" in text and "GPT-4o" in text and "1.00" in text
