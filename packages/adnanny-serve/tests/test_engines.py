"""The transformers engine on a tiny DeepSeek-V3 (real model, real tokenizer) and the vLLM translation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from adnanny_serve.engines import SamplingParams, load_engine
from adnanny_serve.engines.vllm_engine import from_vllm_output, to_vllm_sampling_kwargs
from adnanny_serve.errors import ConfigError, EngineError

PROMPTS = ["<|im_start|>user\nbuy red wine<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\ncheap hotel in downtown paris with a pool<|im_end|>\n<|im_start|>assistant\n",
           "hello",
           "<|im_start|>system\nYou label query-ad relevance.<|im_end|>\n<|im_start|>user\nQuery: shoes<|im_end|>\n"]


def test_batched_left_padded_equals_one_by_one(tiny_engine) -> None:
    p = SamplingParams(max_tokens=12)
    batched = tiny_engine.generate(PROMPTS, p)
    singles = [tiny_engine.generate([x], p)[0] for x in PROMPTS]
    assert [g.token_ids for g in batched] == [g.token_ids for g in singles]
    assert [g.text for g in batched] == [g.text for g in singles]
    for g, prompt in zip(batched, PROMPTS):
        assert g.prompt_tokens == tiny_engine.count_tokens(prompt)
        assert g.completion_tokens == len(g.token_ids) <= 12


def test_logprobs_match_a_teacher_forced_forward(tiny_engine) -> None:
    g = tiny_engine.generate(PROMPTS[:2], SamplingParams(max_tokens=8, logprobs=3))[1]
    ids = tiny_engine.tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    full = torch.tensor([ids + g.token_ids])
    with torch.no_grad():
        lp = tiny_engine.model(full).logits[0].float().log_softmax(-1)
    want = [lp[len(ids) - 1 + j, t].item() for j, t in enumerate(g.token_ids)]
    assert g.logprobs == pytest.approx(want, abs=1e-4)
    # greedy: the chosen token is the most likely one, so it heads the top-3
    for j, t in enumerate(g.token_ids):
        top = g.top_logprobs[j]
        assert len(top) == 3 and max(top, key=top.get) == t


def test_stop_strings_cut_and_keep(tiny_engine) -> None:
    free = tiny_engine.generate([PROMPTS[0]], SamplingParams(max_tokens=16))[0]
    assert free.finish_reason == "length" and free.completion_tokens == 16
    stop = free.text[4:7]
    assert stop and stop in free.text
    cut = tiny_engine.generate([PROMPTS[0]], SamplingParams(max_tokens=16, stop=(stop,)))[0]
    pos = free.text.find(stop)
    assert cut.text == free.text[:pos]
    assert cut.finish_reason == "stop" and cut.completion_tokens < 16
    kept = tiny_engine.generate([PROMPTS[0]], SamplingParams(max_tokens=16, stop=(stop,),
                                                             include_stop_str_in_output=True))[0]
    assert kept.text == free.text[:pos + len(stop)]


def test_sampling_is_seeded(tiny_engine) -> None:
    p = SamplingParams(max_tokens=10, temperature=1.0, seed=7)
    a = tiny_engine.generate(PROMPTS[:2], p)
    b = tiny_engine.generate(PROMPTS[:2], p)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_sampling_params_validation() -> None:
    with pytest.raises(ConfigError, match="`max_tokens` must be an integer >= 1; got 0"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ConfigError, match="`temperature`"):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="`top_p`"):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError, match="`stop` entries"):
        SamplingParams(stop=("",))
    assert SamplingParams(stop="</Label>").stop == ("</Label>",)


def test_engine_errors(tiny_engine, tmp_path) -> None:
    with pytest.raises(ConfigError, match="`prompts` must be a list"):
        tiny_engine.generate("hello", SamplingParams())
    assert tiny_engine.generate([], SamplingParams()) == []
    with pytest.raises(EngineError, match="config.json"):
        load_engine(str(tmp_path))
    with pytest.raises(ConfigError, match="`engine` must be"):
        load_engine(str(tmp_path), engine="tgi")


def test_vllm_translation() -> None:
    p = SamplingParams(max_tokens=5, temperature=0.0, stop=("</Label>",), include_stop_str_in_output=True,
                       logprobs=2, seed=3)
    assert to_vllm_sampling_kwargs(p) == {"max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "stop": ["</Label>"],
                                          "include_stop_str_in_output": True, "seed": 3, "logprobs": 2}
    assert "logprobs" not in to_vllm_sampling_kwargs(SamplingParams())
    lp = lambda v: SimpleNamespace(logprob=v)  # noqa: E731  vLLM's Logprob objects
    out = SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=[SimpleNamespace(
        text="<Label>Good</Label>", token_ids=[10, 11, 12], finish_reason="stop", stop_reason="</Label>",
        logprobs=[{10: lp(-0.1), 4: lp(-2.0), 5: lp(-3.0)}, {11: lp(-0.5), 9: lp(-1.5)}, {12: lp(-0.01)}])])
    g = from_vllm_output(out, p)
    assert (g.text, g.prompt_tokens, g.completion_tokens, g.finish_reason) == ("<Label>Good</Label>", 3, 3, "stop")
    assert g.logprobs == [-0.1, -0.5, -0.01]
    assert g.top_logprobs == [{10: -0.1, 4: -2.0}, {11: -0.5, 9: -1.5}, {12: -0.01}]
    out.outputs[0].finish_reason = "length"
    assert from_vllm_output(out, SamplingParams()).finish_reason == "length"
    out.outputs[0].logprobs = None
    with pytest.raises(EngineError, match="no logprobs"):
        from_vllm_output(out, p)


def test_prefix_cache_gives_the_uncached_result(tiny_engine) -> None:
    system = "<|im_start|>system\n" + "You label query-ad relevance for a search ads system. " * 6 + "<|im_end|>\n"
    prompts = [system + f"<|im_start|>user\nQuery: {q}<|im_end|>\n<|im_start|>assistant\n"
               for q in ("red wine", "cheap hotel in downtown paris", "shoes", "a very long query about running shoes")]
    p = SamplingParams(max_tokens=10, logprobs=2)
    tiny_engine.prefix_caching = False
    try:
        plain = tiny_engine.generate(prompts, p)
    finally:
        tiny_engine.prefix_caching = True
    cached = tiny_engine.generate(prompts, p)
    assert len(tiny_engine._prefix_ids) >= tiny_engine.min_prefix_tokens  # the shared system prompt was cached
    assert [g.token_ids for g in cached] == [g.token_ids for g in plain]
    assert [g.prompt_tokens for g in cached] == [g.prompt_tokens for g in plain]
    for a, b in zip(cached, plain):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
    # a single later prompt with the same prefix reuses the cache and still matches
    one = tiny_engine.generate(prompts[1:2], p)[0]
    assert one.token_ids == plain[1].token_ids
