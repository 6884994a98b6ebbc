"""Reasoning mode that works: on the shared fine-tuned fixture (adnanny-sft; it learned the tag format in both
target forms), label+reasoning outputs parse and agree with label-only outputs on held-out golden rows.

What "agree" means here: the labels the user gets from ``adnanny-serve label`` in each mode — the predictions
file's ``label`` / ``location_label`` / ``quality_label`` columns as ``label_file`` writes them for the model's
own task definition, i.e. with the model's calibrated threshold applied to the primary field's score in both
modes (the documented behaviour of the label command; the score is read at the ``<Label>`` value in both modes,
after the reasoning in reasoning mode). A row agrees when every label field is equal; the rate is over the rows
both modes parsed. The greedy tags (the argmax of ``label_probs``) are compared too and printed.

Why the agreement can only be asked of a model that has learned the job: the two modes are one model answering
after two different prefixes, so on inputs it cannot judge each mode falls back on its own prior. Measured
(64 golden rows): the 01:29 fixture (cased tokenizer, golden relevance BACC 0.63) wrote "bad" for 47/64 rows in
label-only mode and "good" for 50/64 after reasoning — relevance agreement 36% with the threshold, 33% greedy vs
greedy, while location (100%) and quality (95%) agreed; the prompts are byte-identical to the training prompts in
both modes and nothing is cut by a stop string (label mode stops at the last closing tag), so the disagreement
is the model's. The 00:44 fixture had "agreed" 100% only because it wrote "bad" for every row in both modes.
The 03:47 fixture ``da4fd0c3`` (lower-casing tokenizer; its own validation AUC 0.61), all 240 golden rows: 98.3%
of reasoning outputs parse, all-field agreement 72.9% [67.4, 78.4] (relevance 79.2%, location 99.2%, quality
93.2%; relevance greedy vs greedy 62.7%), and the disagreements sit where the label-only score is near the
threshold (relevance agreement 61% within 0.05 of it, 93% beyond 0.1). The 1,600-step fixture ``6b5f9ea8``
learned relevance in label-only mode (bad-view accuracy 95.8% on 120 golden rows) but not after reasoning (69.2%):
93.8% of 64 reasoning outputs parse and agreement is 45.0%, so this test fails on it (serve README, "Does
reasoning mode agree with label-only?", has the recipes tried).
The test also requires that label-only relevance is not (nearly) one class and that agreement is above
what the two modes' label frequencies alone would give (chance agreement): agreement on a collapsed model
proves nothing.

Slow: the fixture is built on first use (28-34 min at 1 thread here, then cached by content) and 64 reasoning
outputs take ~20-40 s on a shared CPU. The bars are the issue's (>= 90% parsed, >= 90% agreement); the rates are
printed, never asserted as exact numbers of the fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

N = 64
FIELDS = ("label", "location_label", "quality_label")


@pytest.fixture(scope="module")
def fixture_model() -> Path:
    from adnanny_sft.testing import fine_tuned_fixture

    return Path(fine_tuned_fixture())


def _greedy(df: pl.DataFrame) -> list[str | None]:
    """The primary field's greedy tag: the most probable allowed value at the ``<Label>`` value step."""
    out = []
    for lp in df["label_probs"].to_list():
        p = json.loads(lp)["label"] if lp else None
        out.append(max(p, key=p.get) if p else None)
    return out


def test_reasoning_parses_and_agrees_with_label_only(fixture_model: Path, tmp_path: Path) -> None:
    from adnanny_serve.engines.transformers_engine import TransformersEngine
    from adnanny_serve.label import LabelConfig, label_file

    golden = [json.loads(line) for line in
              (fixture_model.parent / "sample" / "golden" / "query_ad.jsonl").read_text().splitlines()][:N]
    inp = tmp_path / "golden.jsonl"
    inp.write_text("".join(json.dumps({"id": g["id"], **g["input"]}) + "\n" for g in golden))
    engine = TransformersEngine.from_pretrained(fixture_model, batch_size=16)
    outs, thresholds = {}, {}
    for mode in ("label", "reasoning"):
        out = tmp_path / f"{mode}.parquet"
        # the model's own task definition (tasks/query_ad.toml) and its calibrated threshold, as a user runs it
        stats = label_file(LabelConfig(model=str(fixture_model), input=str(inp), out=str(out), mode=mode,
                                       chunk_size=N, progress=False), engine=engine)
        outs[mode], thresholds[mode] = pl.read_parquet(out), stats.threshold
    lab, rea = outs["label"], outs["reasoning"]
    assert lab["id"].to_list() == rea["id"].to_list() == [g["id"] for g in golden]
    assert thresholds["label"] == thresholds["reasoning"]  # one rule in both modes (None if the model has none)
    fields = [c for c in FIELDS if c in lab.columns]
    parsed_lab = lab["parse_error"].is_null()
    parsed_rea = rea["parse_error"].is_null()
    both = (parsed_lab & parsed_rea).to_list()
    idx = [i for i, ok in enumerate(both) if ok]
    agree = [all(lab[f][i] == rea[f][i] for f in fields) for i in idx]
    per_field = {f: sum(lab[f][i] == rea[f][i] for i in idx) / max(1, len(idx)) for f in fields}
    g_lab, g_rea = _greedy(lab), _greedy(rea)
    greedy_agree = sum(g_lab[i] == g_rea[i] for i in idx) / max(1, len(idx))
    # chance agreement of the relevance labels from the two modes' label frequencies alone
    c_lab, c_rea = Counter(lab["label"][i] for i in idx), Counter(rea["label"][i] for i in idx)
    chance = sum(c_lab[v] * c_rea[v] for v in c_lab) / max(1, len(idx)) ** 2
    rea_rate = float(parsed_rea.mean())
    agree_rate = sum(agree) / len(agree) if agree else 0.0
    print(f"fixture {fixture_model.parent.name}: label-only parsed {float(parsed_lab.mean()):.3f}, label+reasoning "
          f"parsed {rea_rate:.3f}; agreement over {len(idx)} rows {agree_rate:.3f} (per field "
          f"{ {f: round(v, 3) for f, v in per_field.items()} }, relevance greedy vs greedy {greedy_agree:.3f}, "
          f"chance {chance:.3f}); threshold {thresholds['label']}; reasoning "
          f"{float(rea['completion_tokens'].mean()):.0f} vs label {float(lab['completion_tokens'].mean()):.0f} "
          f"tokens; labels label-only {sorted(c_lab.items())} reasoning {sorted(c_rea.items())}")
    assert rea_rate >= 0.90, rea["parse_error"].drop_nulls().head(3).to_list()
    assert agree_rate >= 0.90, (per_field, greedy_agree)
    # agreement of a model that says one thing for every row is vacuous (the 00:44 fixture: "bad" x 64)
    assert max(c_lab.values()) <= 0.9 * len(idx), c_lab
    assert agree_rate > chance, (agree_rate, chance)
    # the reasoning is really there (not an empty think block) and is what the row's `reasoning` column holds
    assert float(rea["completion_tokens"].mean()) > 2 * float(lab["completion_tokens"].mean())
    assert rea.filter(parsed_rea)["reasoning"].str.len_chars().min() > 20
