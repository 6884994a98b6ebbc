"""Explanation-only cooking requests (`teacher_answer = "explanation"`): the prompt asks for the explanation
alone, cook adds the GIVEN labels' tags, and the filters still judge what the teacher wrote."""

from __future__ import annotations

import pytest

from adnanny_cook.config import CookConfig
from adnanny_cook.errors import ConfigError
from adnanny_cook.filters import Candidate, boilerplate_reason, contradiction_reason, schema_parse
from adnanny_cook.pipeline import RESUME_KEYS
from adnanny_cook.tasks import get_task

ROW = {"query": "cheap hotel paris", "ad_title": "Luxury hotel in Paris", "ad_description": "Suites and spa.",
       "ad_url": "www.example.com"}
LABELS = {"label": "fair", "location_label": "good", "quality_label": "good"}


def _judge(text: str, labels: dict = LABELS) -> str | None:
    spec = get_task("query_ad")
    c = Candidate("r0", 0, 0, "steps", spec.assemble_explanation(labels, text), "key", dict(labels))
    return schema_parse(spec, c) or contradiction_reason(spec, c) or boilerplate_reason(c, ROW, 3, 12)


def test_explanation_prompt_asks_for_plain_text_not_tags() -> None:
    spec = get_task("query_ad")
    tagged = spec.reasoning_messages(ROW, LABELS, variant="steps")[1]["content"]
    expl = spec.reasoning_messages(ROW, LABELS, variant="steps", answer="explanation")[1]["content"]
    assert "<Label>" in tagged and "<think>" in tagged
    assert "<Label>" not in expl and "<think>" not in expl and "Write only the explanation" in expl
    # the labels are still given, and the system prompt (never choose a new label) is the same
    assert "Given relevance label: Fair" in expl
    assert (spec.reasoning_messages(ROW, LABELS, answer="explanation")[0]
            == spec.reasoning_messages(ROW, LABELS)[0])
    with pytest.raises(ConfigError, match="`answer` must be one of"):
        spec.reasoning_messages(ROW, LABELS, answer="json")  # type: ignore[arg-type]


def test_assembled_explanation_is_judged_by_the_filters() -> None:
    spec = get_task("query_ad")
    good = ("The searcher wants a cheap hotel in Paris; the ad offers a luxury hotel in Paris with suites, so the "
            "city matches but the price does not.")
    out = spec.assemble_explanation(LABELS, good)
    assert out.startswith("<think>\n" + good) and out.endswith("<AdQuality>Good</AdQuality>")
    assert spec.parse(out).labels == LABELS
    assert _judge(good) is None
    # a stated label that differs from the given one: contradiction, even though cook wrote the tags
    assert _judge(good + " So the relevance label is Bad.") == "contradiction"
    # too short / generic: boilerplate
    assert _judge("The labels are appropriate.") == "boilerplate"
    # blank, or an answer that carries tags but is not a well-formed tagged answer: schema (never repaired)
    assert _judge("   ") == "schema"
    assert _judge(good + " <Label>Good</Label>") == "schema"
    # a full tagged answer is taken as is, and its tags are checked against the supervision
    tagged = f"<think>\n{good}\n</think>\n<Label>Bad</Label>\n<LocationLabel>Good</LocationLabel>\n" \
             "<AdQuality>Good</AdQuality>"
    assert spec.assemble_explanation(LABELS, tagged) == tagged
    assert _judge(tagged) == "contradiction"


def test_config_keys_and_resume_fingerprint() -> None:
    cfg = CookConfig(task="query_ad", input="x.parquet", out="o", base_url="http://x/v1", model="m",
                     teacher_answer="explanation", stop=["\n\n"])
    assert cfg.teacher_answer == "explanation" and cfg.stop == ["\n\n"]
    assert CookConfig(task="query_ad", input="x", out="o", base_url="u", model="m").teacher_answer == "tagged"
    # a resumed run must not mix tagged and explanation-only candidates, or different stop strings
    assert {"teacher_answer", "stop"} <= set(RESUME_KEYS)
    with pytest.raises(ValueError, match="teacher_answer"):
        CookConfig(task="query_ad", input="x", out="o", base_url="u", model="m", teacher_answer="free")
