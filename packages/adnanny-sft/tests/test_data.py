"""Target forms: cook's corpus rows kept as written, the missing form derived with cook's own renderers."""

from __future__ import annotations

import json

import pytest

from adnanny_sft.data import read_rows, with_target_forms
from adnanny_sft.errors import ConfigError, DataError


def test_corpus_with_both_forms_is_not_duplicated(corpus_rows) -> None:
    rows, counts = with_target_forms(corpus_rows, ["reasoning", "label"])
    assert len(rows) == len(corpus_rows) and counts["derived"] == 0
    label_only, c2 = with_target_forms(corpus_rows, ["label"])
    assert all(r["mode"] == "label" for r in label_only)
    assert c2["not_requested"] == sum(r["mode"] == "reasoning" for r in corpus_rows)


def test_label_form_derived_from_reasoning_rows_equals_cooks_label_rows(corpus_rows) -> None:
    from adnanny_cook.tasks import get_task

    reasoning = [r for r in corpus_rows if r["mode"] == "reasoning" and r["task"] == "query_ad"][:20]
    rows, counts = with_target_forms(reasoning, ["reasoning", "label"])
    assert counts == {"kept": 20, "derived": 20, "skipped_no_reasoning": 0, "not_requested": 0}
    derived = [r for r in rows if r["id"].endswith("#label")]
    by_input = {(r["input"]): r for r in corpus_rows if r["mode"] == "label" and r["task"] == "query_ad"}
    matched = 0
    for d in derived:
        spec = get_task("query_ad")
        assert d["target"] == spec.format_target(json.loads(d["labels"]), None)
        assert "<think>" not in d["target"] and "Answer with exactly these tags" in d["messages"][0]["content"]
        twin = by_input.get(d["input"])
        if twin is not None:
            matched += 1
            assert d["messages"] == twin["messages"] and d["target"] == twin["target"]
    assert matched > 0


def test_label_rows_cannot_invent_reasoning(corpus_rows) -> None:
    labels = [r for r in corpus_rows if r["mode"] == "label" and r["task"] == "ad_user"][:5]
    rows, counts = with_target_forms(labels, ["reasoning"])
    assert rows == [] and counts["skipped_no_reasoning"] == 5


def test_generation_tasks_follow_the_forms_and_public_rows_stay(corpus_rows) -> None:
    gen = [r for r in corpus_rows if r["task"] == "keyword_query" and r["mode"] == "reasoning"][:3]
    rows, counts = with_target_forms(gen, ["label"])
    assert [r["id"] for r in rows] == [f"{r['id']}#label" for r in gen] and counts["derived"] == 3
    assert all("<think>" not in r["target"] and r["target"].startswith("<Query>") for r in rows)
    public = [{"id": "p", "task": "public", "mode": "public", "messages": [], "target": "t"}]
    assert with_target_forms(public, ["label"])[0] == public


def test_errors_name_the_problem(sample_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="`target_forms` must be a non-empty subset"):
        with_target_forms([], ["both"])
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "nope")
    with pytest.raises(DataError, match="no rows with split 'test'"):
        read_rows(sample_dir / "corpus", split="test")
