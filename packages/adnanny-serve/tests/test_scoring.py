"""`score` from label-token log-probabilities, on the sample tokenizer (tags are single tokens there)."""

from __future__ import annotations

import math

import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.scoring import field_value_probs, value_token_index

QA = get_task("query_ad")
TEXT = "<Label>Fair</Label>\n<LocationLabel>Good</LocationLabel>\n<AdQuality>Bad</AdQuality>"


def _ids(engine, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_probabilities_come_from_the_value_step(tiny_engine) -> None:
    ids = _ids(tiny_engine, TEXT)
    first = {v: _ids(tiny_engine, QA.render_value("label", v))[0] for v in ("bad", "fair", "good")}
    i, _ = value_token_index(tiny_engine, ids, len("<Label>"))
    assert ids[i] == first["fair"]
    top = [dict() for _ in ids]
    top[i] = {first["fair"]: math.log(0.6), first["good"]: math.log(0.3), first["bad"]: math.log(0.05), 7: -1.0}
    p = field_value_probs(tiny_engine, QA, "label", TEXT, ids, top)
    # renormalized over the allowed values only (token 7 is not a label)
    assert p == pytest.approx({"fair": 0.6 / 0.95, "good": 0.3 / 0.95, "bad": 0.05 / 0.95})
    # a value outside the top-k counts as probability 0
    top[i] = {first["fair"]: math.log(0.6), first["good"]: math.log(0.3)}
    assert field_value_probs(tiny_engine, QA, "label", TEXT, ids, top)["bad"] == 0.0


def test_unscorable_outputs_give_none(tiny_engine) -> None:
    ids = _ids(tiny_engine, "no tags at all")
    assert field_value_probs(tiny_engine, QA, "label", "no tags at all", ids, [{} for _ in ids]) is None
    ids = _ids(tiny_engine, TEXT)
    assert field_value_probs(tiny_engine, QA, "label", TEXT, ids, None) is None
    assert field_value_probs(tiny_engine, QA, "label", TEXT, ids, [{} for _ in ids]) is None  # nothing in top-k
    # the value is looked for after the last </think>: a tag quoted inside the reasoning is not scored
    text = "<think>maybe <Label>Bad</Label>?</think>\n" + TEXT
    ids = _ids(tiny_engine, text)
    i, _ = value_token_index(tiny_engine, ids, text.rfind("<Label>") + len("<Label>"))
    top = [dict() for _ in ids]
    fair = _ids(tiny_engine, "Fair")[0]
    top[i] = {fair: 0.0}
    assert field_value_probs(tiny_engine, QA, "label", text, ids, top)["fair"] == 1.0
