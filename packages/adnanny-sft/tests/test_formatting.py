"""Chat-template formatting: the loss mask covers exactly the assistant target (+ end of turn); truncation
cuts the task input only, never the target, and is counted."""

from __future__ import annotations

import pytest
import torch

from adnanny_sft.errors import ConfigError, DataError
from adnanny_sft.formatting import collate, format_example, format_rows, pad_token_id, prompt_ids


def _decoded(tokenizer, text: str) -> str:
    """``text`` as the tokenizer gives it back: its normalizer (the sample tokenizer lowercases) applied to
    everything but the tags, which are added tokens and keep their case."""
    import re

    norm = tokenizer.backend_tokenizer.normalizer
    if norm is None:
        return text
    return re.sub(r"(<[^<>]+>)|([^<]+)", lambda m: m.group(1) or norm.normalize_str(m.group(2)), text)


def _row(corpus_rows: list[dict], task: str, mode: str) -> dict:
    return next(r for r in corpus_rows if r["task"] == task and r["mode"] == mode)


@pytest.mark.parametrize("mode", ["reasoning", "label"])
def test_mask_is_exactly_target_plus_end_of_turn(tokenizer, corpus_rows, mode: str) -> None:
    row = _row(corpus_rows, "query_ad", mode)
    ex = format_example(tokenizer, row["id"], row["task"], row["messages"], row["target"], max_seq_len=4096)
    ids = list(ex.input_ids)
    first = ex.loss_mask.index(1.0)
    assert all(m == 1.0 for m in ex.loss_mask[first:])  # the target is one contiguous run to the end
    assert tokenizer.decode(ids[first:]) == _decoded(tokenizer, row["target"]) + "<|im_end|>"
    assert ids[:first] == prompt_ids(tokenizer, row["messages"])  # what inference feeds the model
    assert ex.num_target_tokens == len(ids) - first
    if mode == "label":
        assert "<think>" not in tokenizer.decode(ids[first:])


def test_truncation_cuts_the_input_end_and_keeps_instructions_and_tags(tokenizer, corpus_rows) -> None:
    row = dict(_row(corpus_rows, "query_ad", "label"))
    msgs = [dict(m) for m in row["messages"]]
    msgs[-1]["content"] += " filler" * 200  # a very long ad description
    full = format_example(tokenizer, "r", "query_ad", msgs, row["target"], max_seq_len=100_000)
    limit = len(full) - 150
    ex = format_example(tokenizer, "r", "query_ad", msgs, row["target"], max_seq_len=limit)
    assert len(ex) == limit and ex.input_tokens_cut == 150
    text = tokenizer.decode(list(ex.input_ids))
    assert text.endswith(_decoded(tokenizer, row["target"]) + "<|im_end|>")
    assert _decoded(tokenizer, msgs[0]["content"]) in text  # the whole system prompt (output format) survives
    assert _decoded(tokenizer, "Query:") in text and "filler" in text
    first = ex.loss_mask.index(1.0)
    assert tokenizer.decode(list(ex.input_ids[first:])) == _decoded(tokenizer, row["target"]) + "<|im_end|>"


def test_rows_whose_target_cannot_fit_are_dropped_and_counted(tokenizer, corpus_rows) -> None:
    rows = [_row(corpus_rows, "query_ad", "reasoning"), _row(corpus_rows, "query_ad", "label"),
            _row(corpus_rows, "ad_user", "label")]
    lengths = [len(format_example(tokenizer, r["id"], r["task"], r["messages"], r["target"], max_seq_len=10**6))
               for r in rows]
    limit = min(lengths[0], lengths[1]) - 1  # the reasoning row is longer than the label row
    examples, report = format_rows(tokenizer, rows, max_seq_len=limit, truncation="drop")
    dropped_ids = {d["id"] for d in report.dropped_rows}
    assert rows[0]["id"] in dropped_ids and report.dropped["query_ad"] >= 1
    assert len(examples) + len(report.dropped_rows) == 3
    assert all(len(e) <= limit for e in examples)
    # in `input` mode a reasoning target longer than the limit is still dropped (never cut)
    tiny = 40
    _, rep2 = format_rows(tokenizer, rows[:1], max_seq_len=tiny, truncation="input")
    assert rep2.dropped_rows[0]["reason"] == "target_does_not_fit"
    assert "dropped because the target did not fit" in rep2.summary()


def test_bad_rows_and_templates_are_refused(tokenizer, corpus_rows) -> None:
    row = _row(corpus_rows, "query_ad", "label")
    with pytest.raises(DataError, match="empty `target`"):
        format_example(tokenizer, "x", "query_ad", row["messages"], "", max_seq_len=512)
    with pytest.raises(DataError, match="no assistant turn"):
        format_example(tokenizer, "x", "query_ad", [*row["messages"], {"role": "assistant", "content": "a"}],
                       "b", max_seq_len=512)
    with pytest.raises(DataError, match="lacks `target`"):
        format_rows(tokenizer, [{"id": "x", "task": "t", "messages": row["messages"]}], max_seq_len=512)
    with pytest.raises(ConfigError, match="`truncation` must be one of"):
        format_example(tokenizer, "x", "query_ad", row["messages"], "t", max_seq_len=512, truncation="left")


def test_a_template_that_rewrites_the_target_is_refused(sample_dir, corpus_rows) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sample_dir / "tokenizer")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim | upper }}"
                         "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    row = _row(corpus_rows, "query_ad", "label")
    with pytest.raises(ConfigError, match="does not render the assistant turn"):
        format_example(tok, "x", "query_ad", row["messages"], row["target"], max_seq_len=4096)


def test_collate_pads_right_without_attention_or_loss(tokenizer, corpus_rows) -> None:
    rows = [_row(corpus_rows, "query_ad", "reasoning"), _row(corpus_rows, "ad_user", "label")]
    examples, _ = format_rows(tokenizer, rows, max_seq_len=4096)
    batch = collate(examples, pad_id=pad_token_id(tokenizer), sample_weights=[0.5, 2.0])
    short = min(range(2), key=lambda i: len(examples[i]))
    n = len(examples[short])
    assert batch.input_ids.shape == (2, max(len(e) for e in examples))
    assert batch.attention_mask[short, n:].sum() == 0 and batch.loss_mask[short, n:].sum() == 0
    assert (batch.input_ids[short, n:] == pad_token_id(tokenizer)).all()
    assert torch.equal(batch.sample_weights, torch.tensor([0.5, 2.0]))
    assert batch.sample_ids == tuple(e.id for e in examples) and batch.task == ("query_ad", "ad_user")


def test_input_loss_weight_marks_only_the_user_input(tokenizer) -> None:
    """Input tokens get the weight, the system prompt none, targets 1; the normaliser counts targets only."""
    from adnanny_sft.errors import ConfigError
    from adnanny_sft.formatting import format_example

    msgs = [{"role": "system", "content": "You label things."}, {"role": "user", "content": "Query: red wine"}]
    plain = format_example(tokenizer, "a", "t", msgs, "<Label>Good</Label>", max_seq_len=256)
    weighted = format_example(tokenizer, "a", "t", msgs, "<Label>Good</Label>", max_seq_len=256,
                              input_loss_weight=0.3)
    assert plain.input_ids == weighted.input_ids and plain.num_target_tokens == weighted.num_target_tokens
    marked = "".join(tokenizer.decode([t]) for t, m in zip(weighted.input_ids, weighted.loss_mask) if m == 0.3)
    assert marked == _decoded(tokenizer, "Query: red wine")
    sys_ids = tokenizer("You label things.", add_special_tokens=False)["input_ids"]
    assert all(m == 0.0 for m in weighted.loss_mask[: len(sys_ids) + 2])
    import pytest

    with pytest.raises(ConfigError, match="input_loss_weight"):
        format_example(tokenizer, "a", "t", msgs, "<Label>Good</Label>", max_seq_len=256, input_loss_weight=1.0)
