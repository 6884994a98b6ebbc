"""Jump-forward decoding of the answer's fixed tags: drafts from the task format, outputs equal plain greedy.

The tiny random DeepSeek never follows the tag format, so the skeletons here are cut from its own greedy text
(drafts the model accepts) and from the task (drafts it rejects); either way the output must be exactly what
plain greedy decoding writes — tokens, text, finish reason, log-probabilities — with fewer forward passes when
drafts are accepted.
"""

from __future__ import annotations

import pytest
from adnanny_cook.tasks import get_task
from adnanny_serve.engines import SamplingParams
from adnanny_serve.engines.jump_forward import TagSkeleton
from adnanny_serve.errors import ConfigError

SYSTEM = "<|im_start|>system\n" + "You label query-ad relevance for a search ads system. " * 6 + "<|im_end|>\n"
PROMPTS = [SYSTEM + f"<|im_start|>user\nQuery: {q}<|im_end|>\n<|im_start|>assistant\n"
           for q in ("red wine", "cheap hotel in downtown paris", "shoes", "a very long query about running shoes",
                     "tv")]


def test_skeleton_of_query_ad_and_its_drafts() -> None:
    task = get_task("query_ad")
    sk = TagSkeleton.from_task(task, "label")
    assert sk is not None
    assert sk.pieces == ("<Label>", "</Label>\n<LocationLabel>", "</LocationLabel>\n<AdQuality>", "</AdQuality>")
    assert sk.values == (("Bad", "Fair", "Good"), ("Good", "Bad"), ("Good", "Bad"))
    assert sk.draft("") == "<Label>"
    assert sk.draft("<Lab") == "el>"
    assert sk.draft("<Label>") == ""  # the model chooses the value
    assert sk.draft("<Label>G") == "ood</Label>\n<LocationLabel>"  # one value starts with G: finish it
    assert sk.draft("<Label>Fair") == "</Label>\n<LocationLabel>"
    assert sk.draft("<Label>Fair</Label>\n<Location") == "Label>"
    assert sk.draft("<Label>Fair</Label>\n<LocationLabel>Bad</LocationLabel>\n<AdQuality>Good") == "</AdQuality>"
    assert sk.draft("<Label>Fair</Label>\n<LocationLabel>Bad</LocationLabel>\n<AdQuality>Good</AdQuality>") == ""
    assert sk.draft("<Label>Great") == ""  # left the format: no draft, the model decodes freely
    assert sk.draft("Sure! <Label>") == ""
    reasoning = TagSkeleton.from_task(task, "reasoning")
    assert reasoning.draft("<think>\nthe ad sells shoes") == ""
    assert reasoning.draft("<think>\nthe ad sells shoes\n</think>") == "\n<Label>"
    assert TagSkeleton.from_task(get_task("user_query"), "label") is None  # free-text outputs: no skeleton
    with pytest.raises(ConfigError, match="one piece more than value slots"):
        TagSkeleton(pieces=("<a>",), values=(("x",),))


def _same(a, b) -> None:
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.text for g in a] == [g.text for g in b]
    assert [g.finish_reason for g in a] == [g.finish_reason for g in b]
    assert [g.completion_tokens for g in a] == [g.completion_tokens for g in b]
    for x, y in zip(a, b):
        assert (x.logprobs is None) == (y.logprobs is None)
        if x.logprobs is not None:
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
            assert [set(t) for t in x.top_logprobs] == [set(t) for t in y.top_logprobs]


def _plain(engine, prompts, params):
    engine.jump_forward = False
    try:
        return engine.generate(prompts, params)
    finally:
        engine.jump_forward = True


def test_outputs_equal_plain_greedy_with_accepted_and_rejected_drafts(tiny_engine) -> None:
    free = _plain(tiny_engine, PROMPTS, SamplingParams(max_tokens=20))
    tok = tiny_engine.tokenizer
    ids = free[0].token_ids
    s = [tok.decode(ids[:k], skip_special_tokens=False) for k in range(len(ids) + 1)]
    # a skeleton cut from prompt 0's own greedy text: its drafts are what the model writes (accepted) for
    # prompt 0 and wrong (rejected at some point) for the others, all in one batch
    assert all(s[k + 1].startswith(s[k]) for k in range(20))
    own = TagSkeleton(pieces=(s[5], s[12][len(s[7]):], s[20][len(s[14]):]),
                      values=((s[7][len(s[5]):],), (s[14][len(s[12]):], "zz")))
    task = TagSkeleton.from_task(get_task("query_ad"), "label")
    for sk in (own, task):
        for stop in ((), (s[16][len(s[13]):],)):  # a stop string inside a drafted stretch, or none
            p = SamplingParams(max_tokens=20, logprobs=3, stop=stop, include_stop_str_in_output=True, skeleton=sk)
            want = _plain(tiny_engine, PROMPTS, p)
            got = tiny_engine.generate(PROMPTS, p)
            _same(got, want)
    # the accepted drafts cut the forward passes of prompt 0: 20 tokens in fewer than 20 steps
    p = SamplingParams(max_tokens=20, logprobs=2, skeleton=own)
    got = tiny_engine.generate(PROMPTS[:1], p)
    st = tiny_engine.jump_stats
    _same(got, _plain(tiny_engine, PROMPTS[:1], p))
    assert st.accepted > 0 and st.passes < 20 and st.tokens == got[0].completion_tokens
    # a budget that ends inside a draft stops exactly where plain decoding does
    p = SamplingParams(max_tokens=6, skeleton=own)
    _same(tiny_engine.generate(PROMPTS, p), _plain(tiny_engine, PROMPTS, p))


def test_sampling_ignores_the_skeleton(tiny_engine) -> None:
    sk = TagSkeleton.from_task(get_task("query_ad"), "label")
    p = SamplingParams(max_tokens=8, temperature=1.0, seed=3, skeleton=sk)
    a = tiny_engine.generate(PROMPTS[:2], p)
    b = _plain(tiny_engine, PROMPTS[:2], p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
