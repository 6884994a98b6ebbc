"""Reasoning mode that works: on the shared fine-tuned fixture (adnanny-sft; it learned the tag format in both
target forms), label+reasoning outputs parse and agree with label-only outputs on held-out golden rows.

Slow: the fixture is built on first use (1-4 min, then cached by content) and 64 reasoning outputs take ~40 s on
a shared CPU. The thresholds are the brief's (>= 90% parsed, >= 90% agreement on every label field of the rows
both modes parsed); the rates are printed, never asserted as exact numbers of the fixture."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

N = 64


@pytest.fixture(scope="module")
def fixture_model() -> Path:
    from adnanny_sft.testing import fine_tuned_fixture

    return Path(fine_tuned_fixture())


def test_reasoning_parses_and_agrees_with_label_only(fixture_model: Path, tmp_path: Path) -> None:
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_serve.label import LabelConfig, label_file

    golden = [json.loads(line) for line in
              (fixture_model.parent / "sample" / "golden" / "query_ad.jsonl").read_text().splitlines()][:N]
    inp = tmp_path / "golden.jsonl"
    inp.write_text("".join(json.dumps({"id": g["id"], **g["input"]}) + "\n" for g in golden))
    engine = TransformersEngine.from_pretrained(fixture_model, batch_size=16)
    outs = {}
    for mode in ("label", "reasoning"):
        out = tmp_path / f"{mode}.parquet"
        # the model's own task definition (tasks/query_ad.toml) and its calibrated threshold, as a user runs it
        label_file(LabelConfig(model=str(fixture_model), input=str(inp), out=str(out), mode=mode, chunk_size=N,
                               progress=False), engine=engine)
        outs[mode] = pl.read_parquet(out)
    lab, rea = outs["label"], outs["reasoning"]
    assert lab["id"].to_list() == rea["id"].to_list() == [g["id"] for g in golden]
    fields = [c for c in ("label", "location_label", "quality_label") if c in lab.columns]
    parsed_lab = lab["parse_error"].is_null()
    parsed_rea = rea["parse_error"].is_null()
    both = parsed_lab & parsed_rea
    agree = pl.Series([all(lab[f][i] == rea[f][i] for f in fields) for i in range(lab.height)])
    rea_rate = float(parsed_rea.mean())
    agree_rate = float(agree.filter(both).mean()) if both.any() else 0.0
    print(f"fixture {fixture_model.parent.name}: label-only parsed {float(parsed_lab.mean()):.3f}, label+reasoning "
          f"parsed {rea_rate:.3f}, agreement on {fields} over {int(both.sum())} rows {agree_rate:.3f}; reasoning "
          f"{float(rea['completion_tokens'].mean()):.0f} vs label {float(lab['completion_tokens'].mean()):.0f} tokens;"
          f" labels {lab['label'].value_counts(sort=True).rows()}")
    assert rea_rate >= 0.90, rea["parse_error"].drop_nulls().head(3).to_list()
    assert agree_rate >= 0.90
    # the reasoning is really there (not an empty think block) and is what the row's `reasoning` column holds
    assert float(rea["completion_tokens"].mean()) > 2 * float(lab["completion_tokens"].mean())
    assert rea.filter(parsed_rea)["reasoning"].str.len_chars().min() > 20
