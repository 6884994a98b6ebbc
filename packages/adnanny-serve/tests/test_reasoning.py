"""Reasoning mode on a chat template that pre-opens ``<think>`` (DeepSeek-R1's generation prompt): the prompt's open
tag counts for the parser; label mode closes the pre-opened block instead."""

from __future__ import annotations

import polars as pl
import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.label import LabelConfig, label_file

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

REL = get_task("query_ad").select_labels(("label",))


def _preopening(engine):
    """The scripted engine with an R1-style template: the assistant turn starts with ``<think>\\n``."""
    plain = engine.apply_chat_template
    engine.apply_chat_template = lambda messages: plain(messages) + "<think>\n"
    return engine


def _rows(tmp_path, n=6):
    inp = tmp_path / "in.jsonl"
    pl.DataFrame({"id": [f"r{i}" for i in range(n)], "query": [f"red wine {i}" for i in range(n)],
                  "ad_title": ["Wine shop"] * n, "ad_description": ["Good wines"] * n,
                  "landing_page": ["w.com"] * n}).write_ndjson(inp)
    return inp


@pytest.mark.parametrize("preopen", [True, False])
def test_reasoning_parses_when_the_template_preopens_think(scripted, tmp_path, preopen) -> None:
    labels = ["Good", "Bad"]

    def answer(prompt: str) -> str:
        i = int(prompt.rsplit("red wine ", 1)[1].split()[0].strip("<>\"'"))
        body = f"The ad sells wine for query {i}.</think>\n<Label>{labels[i % 2]}</Label>"
        return body if prompt.endswith("<think>\n") else "<think>" + body

    eng = scripted(REL, answer)
    if preopen:
        _preopening(eng)
    model = tmp_path / "m"
    model.mkdir()
    out = tmp_path / "o.parquet"
    stats = label_file(LabelConfig(model=str(model), task="query_ad", labels="label", input=str(_rows(tmp_path)),
                                   out=str(out), mode="reasoning", progress=False), engine=eng)
    df = pl.read_parquet(out)
    assert stats.parse_errors == 0, df["parse_error"].to_list()
    assert df["label"].to_list() == ["good", "bad"] * 3
    assert df["reasoning"][1] == "The ad sells wine for query 1."
    assert all(r.startswith("<think>") for r in df["raw"])  # raw holds the whole answer, open tag included


def test_label_mode_closes_a_preopened_think_block(scripted, tmp_path) -> None:
    eng = _preopening(scripted(REL, lambda prompt: "<Label>Good</Label>"))
    model = tmp_path / "m"
    model.mkdir()
    out = tmp_path / "o.parquet"
    stats = label_file(LabelConfig(model=str(model), task="query_ad", labels="label", input=str(_rows(tmp_path, 2)),
                                   out=str(out), mode="label", progress=False), engine=eng)
    assert stats.parse_errors == 0
    assert all(p.endswith("<think>\n\n</think>\n\n") for p in eng.prompts)  # an empty, closed think block
    assert pl.read_parquet(out)["label"].to_list() == ["good", "good"]
