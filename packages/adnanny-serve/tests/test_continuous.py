"""Continuous batching: the same greedy outputs as unbatched generation with sequences joining and leaving the
batch (mixed lengths, budgets, stops, parameters, seeds); a seed reproduces its sample whatever shares the batch;
the server on it (chat, n, streaming, cancellation)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import openai
import pytest
from adnanny_serve.engines.base import SamplingParams
from adnanny_serve.engines.continuous import ContinuousScheduler
from adnanny_serve.server import Limits, ServerThread, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPTS = ["buy red wine online", "cheap hotel paris france near the tower", "hi", "laptop deals for students",
           "running shoes", "best pizza in rome"]


def test_join_and_leave_give_unbatched_greedy_outputs(tiny_engine) -> None:
    ps = [SamplingParams(max_tokens=m, stop=st, logprobs=lp) for m, st, lp in
          [(12, (), 2), (20, ("\n",), None), (3, (), None), (16, (), 0), (9, (".",), None), (7, (), 3)]]
    ref = [tiny_engine.generate([p], sp)[0] for p, sp in zip(PROMPTS, ps)]
    sched = ContinuousScheduler(tiny_engine, max_batch=3)  # 6 sequences through 3 slots: joins mid-run
    got = sched.generate(PROMPTS, ps)
    for a, b in zip(ref, got):
        assert (b.text, b.token_ids, b.finish_reason, b.prompt_tokens) == (a.text, a.token_ids, a.finish_reason,
                                                                           a.prompt_tokens)
        if a.logprobs is not None:
            assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
            assert [sorted(d) for d in b.top_logprobs] == [sorted(d) for d in a.top_logprobs]
    assert sched.steps < sum(g.completion_tokens for g in got)  # rows really shared steps


def test_joins_prefill_only_what_follows_the_shared_system_prompt(tiny_engine) -> None:
    system = "<|im_start|>system\n" + "You label query-ad relevance for a search ads system. " * 6 + "<|im_end|>\n"
    prompts = [system + f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in PROMPTS]
    ps = [SamplingParams(max_tokens=m, logprobs=1) for m in (9, 4, 12, 6, 3, 8)]
    tiny_engine._prefix_ids, tiny_engine._prefix_cache = (), None
    tiny_engine.prefix_caching = False
    try:
        ref = [tiny_engine.generate([p], sp)[0] for p, sp in zip(prompts, ps)]
    finally:
        tiny_engine.prefix_caching = True
    sched = ContinuousScheduler(tiny_engine, max_batch=2)  # joins one or two at a time, mid-run
    got = sched.generate(prompts, ps)
    for a, b in zip(ref, got):
        assert (b.text, b.token_ids, b.finish_reason, b.prompt_tokens) == (a.text, a.token_ids, a.finish_reason,
                                                                           a.prompt_tokens)
        assert b.logprobs == pytest.approx(a.logprobs, abs=1e-4)
    shared = len(tiny_engine._prefix_ids)
    assert shared >= tiny_engine.min_prefix_tokens
    assert sched.prefilled_tokens == sum(g.prompt_tokens for g in got) - len(prompts) * shared


def test_staggered_arrivals_and_seeded_samples_do_not_depend_on_neighbours(tiny_engine) -> None:
    from adnanny_serve.engines.continuous import Sequence

    greedy = SamplingParams(max_tokens=10)
    hot = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9)
    alone = ContinuousScheduler(tiny_engine, max_batch=4).generate(["cheap hotel"], hot, seeds=[11])[0]
    sched = ContinuousScheduler(tiny_engine, max_batch=4)
    out: dict[str, object] = {}
    tok = tiny_engine.tokenizer

    def add(name, prompt, params, seed=None):
        sched.add(Sequence(tok(prompt, add_special_tokens=False)["input_ids"], params,
                           done=lambda g: out.__setitem__(name, g), seed=seed))

    add("a", "buy red wine online", greedy)
    sched.step()
    sched.step()
    add("s", "cheap hotel", hot, seed=11)  # joins a running batch
    sched.step()
    add("b", "hi", greedy)
    sched.run_until_idle()
    assert out["s"].text == alone.text and out["s"].token_ids == alone.token_ids
    for name, prompt in (("a", "buy red wine online"), ("b", "hi")):
        assert out[name].token_ids == tiny_engine.generate([prompt], greedy)[0].token_ids
    other = ContinuousScheduler(tiny_engine, max_batch=4).generate(["cheap hotel"] * 3, hot, seeds=[11, 12, 13])
    assert other[0].token_ids == alone.token_ids and len({tuple(g.token_ids) for g in other}) == 3


def _leave_after(url: str, body: dict, after_s: float) -> None:
    from urllib.parse import urlparse

    u = urlparse(url)
    data = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    time.sleep(after_s)
    s.close()


def test_server_on_continuous_batching(tiny_engine) -> None:
    app = create_app(tiny_engine, model_name="tiny", max_batch=4, max_queue=16, batching="continuous",
                     limits=Limits(max_tokens=5000))
    with ServerThread(app) as s:
        c = openai.OpenAI(base_url=s.base_url, api_key="x", max_retries=0, timeout=60)
        msgs = [{"role": "user", "content": "Query: red wine"}]
        r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
        want = tiny_engine.generate([tiny_engine.apply_chat_template(msgs)], SamplingParams(max_tokens=8))[0]
        assert r.choices[0].message.content == want.text
        kw = dict(model="tiny", prompt="cheap hotel", max_tokens=8, temperature=1.0, n=3, seed=5)
        a, b = c.completions.create(**kw), c.completions.create(**kw)
        assert [x.text for x in a.choices] == [x.text for x in b.choices] and len({x.text for x in a.choices}) == 3
        parts = "".join(ch.choices[0].text for ch in c.completions.create(**{**kw, "n": 1}, stream=True)
                        if ch.choices)
        assert parts == a.choices[0].text  # sample 0 of the same seed, streamed
        base = s.base_url.removesuffix("/v1")
        _leave_after(f"{s.base_url}/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5000,
                                                  "temperature": 0}, 0.5)
        deadline = time.time() + 10
        while time.time() < deadline:
            m = urllib.request.urlopen(f"{base}/metrics").read().decode()
            if "adnanny_serve_cancelled_prompts_total 1" in m and "adnanny_serve_running_prompts 0" in m:
                break
            time.sleep(0.05)
        assert "adnanny_serve_cancelled_prompts_total 1" in m and "adnanny_serve_running_prompts 0" in m, m
