"""The OpenAI-compatible server over real HTTP on 127.0.0.1, driven by the `openai` client."""

from __future__ import annotations

import concurrent.futures as cf
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import openai
import pytest
from adnanny_serve.server import Limits, ServerThread, create_app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Resp:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self):
        return json.loads(self.text)


def _http(method: str, url: str, *, content: bytes | None = None, json_body=None, headers=None, timeout=120) -> Resp:
    """Plain stdlib HTTP (no client library between the test and the server)."""
    if json_body is not None:
        content = json.dumps(json_body).encode()
    req = urllib.request.Request(url, data=content, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Resp(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode())
    except urllib.error.HTTPError as e:
        return Resp(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode())


@pytest.fixture(scope="module")
def server(tiny_engine):
    app = create_app(tiny_engine, model_name="tiny", api_key="sk-test", max_batch=4, max_queue=32,
                     limits=Limits(max_prompt_tokens=256, max_tokens=64, max_body_bytes=20_000))
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=60)


def test_models(client) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_matches_engine(client, tiny_engine) -> None:
    from adnanny_serve.engines import SamplingParams

    msgs = [{"role": "system", "content": "Label it."}, {"role": "user", "content": "Query: red wine"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    want = tiny_engine.generate([tiny_engine.apply_chat_template(msgs)], SamplingParams(max_tokens=6, logprobs=2))[0]
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == want.completion_tokens
    assert r.choices[0].finish_reason == "length"
    lp = r.choices[0].logprobs.content
    assert [c.logprob for c in lp] == pytest.approx(want.logprobs, abs=1e-5)
    assert all(len(c.top_logprobs) == 2 for c in lp)


def test_completions_batch_of_prompts(client, tiny_engine) -> None:
    from adnanny_serve.engines import SamplingParams

    prompts = ["buy red wine", "cheap hotel paris"]
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=5, temperature=0, stop=["\n"])
    want = tiny_engine.generate(prompts, SamplingParams(max_tokens=5, stop=("\n",)))
    assert [c.text for c in r.choices] == [g.text for g in want]
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == sum(g.completion_tokens for g in want)


def test_errors_are_clear_4xx(client, server) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist here; this server serves 'tiny'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match=r"`messages\[0\].role` must be"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="`max_tokens` is 500 but this server allows at most 64"):
        client.completions.create(model="tiny", prompt="hi", max_tokens=500)
    with pytest.raises(openai.BadRequestError, match=r"`n` must be an integer in \[1, 8\]; got 9"):
        client.completions.create(model="tiny", prompt="hi", n=9)
    with pytest.raises(openai.BadRequestError, match="at most 256"):
        client.completions.create(model="tiny", prompt="word " * 400, max_tokens=2)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    h = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}
    r = _http("POST", f"{server.base_url}/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = _http("POST", f"{server.base_url}/completions", content=b"x" * 30_000, headers=h)
    assert r.status_code == 413 and "at most 20000" in r.json()["error"]["message"]
    r = _http("POST", f"{server.base_url}/completions", json_body={"model": "tiny", "prompt": "hi", "stream": "yes"},
              headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    r = _http("POST", f"{server.base_url}/completions",
              json_body={"model": "tiny", "prompt": "hi", "stream": True, "logprobs": 1}, headers=h)
    assert r.status_code == 400 and "cannot be streamed" in r.json()["error"]["message"]
    r = _http("GET", f"{server.base_url}/nothing", headers=h)
    assert r.status_code == 404


def test_overload_answers_429_with_retry_after(tiny_engine) -> None:
    app = create_app(tiny_engine, model_name="tiny", max_batch=2, max_queue=2)
    with ServerThread(app) as s:
        body = {"model": "tiny", "prompt": "buy red wine", "max_tokens": 24, "temperature": 0}

        def one(_: int) -> Resp:
            return _http("POST", f"{s.base_url}/completions", json_body=body)

        with cf.ThreadPoolExecutor(16) as ex:
            rs = list(ex.map(one, range(16)))
        codes = [r.status_code for r in rs]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) >= 1 and codes.count(200) >= 2
        refused = [r for r in rs if r.status_code == 429]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert refused[0].json()["error"]["type"] == "rate_limit_error"
        # the openai client surfaces it as RateLimitError
        c = openai.OpenAI(base_url=s.base_url, api_key="x", max_retries=0, timeout=120)
        with cf.ThreadPoolExecutor(16) as ex:
            futs = [ex.submit(c.completions.create, **body) for _ in range(16)]
            errs = [f.exception() for f in futs]
        assert any(isinstance(e, openai.RateLimitError) for e in errs)
        assert all(e is None or isinstance(e, openai.RateLimitError) for e in errs)
        stats = _http("GET", f"{s.base_url.removesuffix('/v1')}/health").json()
        assert stats["batches"] < stats["served"]  # concurrent requests were batched together


def test_n_samples_distinct_and_reproducible_with_a_seed(client, tiny_engine) -> None:
    msgs = [{"role": "user", "content": "Query: red wine"}]
    kw = dict(model="tiny", messages=msgs, max_tokens=8, temperature=1.0, n=4, seed=7)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    assert len(set(texts)) >= 3, texts  # n draws from one generator differ
    assert texts == [c.message.content for c in b.choices]  # the same seed, the same n samples
    assert a.usage.completion_tokens >= 4 and a.usage.prompt_tokens == b.usage.prompt_tokens
    c = client.completions.create(model="tiny", prompt=["buy red wine", "cheap hotel"], max_tokens=4, temperature=0,
                                  n=2)
    assert [x.index for x in c.choices] == [0, 1, 2, 3]
    assert c.choices[0].text == c.choices[1].text and c.choices[2].text == c.choices[3].text  # greedy: equal


class SlowEngine:
    """A fake engine spending 20 ms per decoding step; records prompts and the steps it ran per prompt."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.steps: dict[str, int] = {}
        self.stopped: dict[str, str] = {}

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def apply_chat_template(self, messages):
        return messages[-1]["content"]

    def token_strings(self, ids):
        return ["x" for _ in ids]

    def generate(self, prompts, params, *, cancelled=None):
        import time as _t

        from adnanny_serve.engines.base import Generation

        self.prompts.extend(prompts)
        live = set(range(len(prompts)))
        for _ in range(params.max_tokens):
            for i in list(live):
                if cancelled is not None and cancelled(i):
                    live.discard(i)
                    self.stopped[prompts[i]] = "cancelled"
                else:
                    self.steps[prompts[i]] = self.steps.get(prompts[i], 0) + 1
            if not live:
                break
            _t.sleep(0.02)
        return [Generation(text="x" * self.steps.get(p, 0), prompt_tokens=1, completion_tokens=self.steps.get(p, 0),
                           finish_reason="length") for p in prompts]


def _post_and_leave(url: str, body: dict, after_s: float) -> None:
    """Send a request and close the connection after `after_s` seconds without reading the answer."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    data = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(f"POST {u.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    import time as _t

    _t.sleep(after_s)
    s.close()


def test_disconnected_client_is_cancelled_running_and_queued() -> None:
    import threading
    import time as _t

    eng = SlowEngine()
    app = create_app(eng, model_name="slow", max_batch=1, max_queue=8, batch_wait_s=0,
                     limits=Limits(max_tokens=2000))
    with ServerThread(app) as s:
        url = f"{s.base_url}/completions"
        # 1. running: 2000 steps would take 40 s; the client leaves after 0.5 s
        _post_and_leave(url, {"model": "slow", "prompt": "running one", "max_tokens": 2000}, 0.5)
        deadline = _t.time() + 10
        while _t.time() < deadline and "running one" not in eng.stopped:
            _t.sleep(0.02)
        assert eng.stopped.get("running one") == "cancelled"
        assert eng.steps["running one"] < 200  # stopped within a few steps of the disconnect, not after 2000
        # 2. queued: a long request holds the engine; a second client leaves while still queued
        holder = threading.Thread(target=_http, args=("POST", url),
                                  kwargs={"json_body": {"model": "slow", "prompt": "holder", "max_tokens": 60}})
        holder.start()
        _t.sleep(0.2)
        _post_and_leave(url, {"model": "slow", "prompt": "queued one", "max_tokens": 5}, 0.3)
        holder.join(timeout=30)
        r = _http("POST", url, json_body={"model": "slow", "prompt": "after", "max_tokens": 2})
        assert r.status_code == 200
        assert "queued one" not in eng.prompts  # never reached the engine
        assert eng.steps["holder"] == 60
        m = _http("GET", f"{s.base_url.removesuffix('/v1')}/metrics").text
        assert "adnanny_serve_cancelled_prompts_total 2" in m, m
        assert "# TYPE adnanny_serve_queue_prompts gauge" in m


def test_multi_prompt_request_is_admitted_whole_or_refused_whole() -> None:
    import threading
    import time as _t

    eng = SlowEngine()
    app = create_app(eng, model_name="slow", max_batch=1, max_queue=3, batch_wait_s=0)
    with ServerThread(app) as s:
        url = f"{s.base_url}/completions"
        holder = threading.Thread(target=_http, args=("POST", url),
                                  kwargs={"json_body": {"model": "slow", "prompt": "holder", "max_tokens": 40}})
        holder.start()
        _t.sleep(0.2)
        queued = threading.Thread(target=_http, args=("POST", url),
                                  kwargs={"json_body": {"model": "slow", "prompt": ["q1", "q2"], "max_tokens": 1}})
        queued.start()
        _t.sleep(0.2)  # 2 of 3 places taken: a request of 2 prompts does not fit and is refused whole
        r = _http("POST", url, json_body={"model": "slow", "prompt": ["a1", "a2"], "max_tokens": 1})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "2 prompts asked, 1 places free" in r.json()["error"]["message"]
        holder.join(timeout=30)
        queued.join(timeout=30)
        assert "a1" not in eng.prompts and "a2" not in eng.prompts  # nothing of it was queued
        assert {"q1", "q2"} <= set(eng.prompts)
        m = _http("GET", f"{s.base_url.removesuffix('/v1')}/metrics").text
        assert "adnanny_serve_overloaded_total 1" in m


def test_streamed_chunks_concatenate_to_the_non_streamed_text(client) -> None:
    msgs = [{"role": "user", "content": "Query: cheap hotel paris"}]
    kw = dict(model="tiny", messages=msgs, max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw).choices[0]
    parts, finish, usage = [], None, None
    for ch in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            assert ch.object == "chat.completion.chunk"
            if c.delta.content:
                parts.append(c.delta.content)
            finish = c.finish_reason or finish
    assert "".join(parts) == whole.message.content
    assert len(parts) > 2, parts  # really incremental, not one chunk at the end
    assert finish == whole.finish_reason and usage.completion_tokens == 16
    # completions: n seeded samples of two prompts, streamed == not streamed, choice by choice
    kw2 = dict(model="tiny", prompt=["buy red wine", "hotel"], max_tokens=10, temperature=1.0, n=2, seed=3,
               stop=["\n"])
    ref = client.completions.create(**kw2)
    got: dict[int, str] = {}
    for ch in client.completions.create(**kw2, stream=True):
        for c in ch.choices:
            got[c.index] = got.get(c.index, "") + c.text
    assert [got[i] for i in range(4)] == [c.text for c in ref.choices]


@pytest.mark.parametrize("batching", ["static", "continuous"])
def test_token_budget_admission(tiny_engine, batching) -> None:
    import threading
    import time as _t

    eng = SlowEngine() if batching == "static" else tiny_engine
    app = create_app(eng, model_name="m", max_batch=1, max_queue=16, batch_wait_s=0, batching=batching,
                     max_queue_tokens=120, limits=Limits(max_tokens=5000))
    with ServerThread(app) as s:
        url = f"{s.base_url}/completions"
        long = 600 if batching == "continuous" else 80
        holder = threading.Thread(target=_http, args=("POST", url),
                                  kwargs={"json_body": {"model": "m", "prompt": "holder", "max_tokens": long,
                                                        "temperature": 0}})
        holder.start()
        _t.sleep(0.5)
        waiting = threading.Thread(target=_http, args=("POST", url),
                                   kwargs={"json_body": {"model": "m", "prompt": "a b", "max_tokens": 60}})
        waiting.start()
        _t.sleep(0.3)  # ~62 tokens wait; 62 + 61 > 120: refused by the token budget although the queue has room
        r = _http("POST", url, json_body={"model": "m", "prompt": "c", "max_tokens": 60})
        assert r.status_code == 429 and "the budget is 120" in r.json()["error"]["message"], r.text
        assert int(r.headers["retry-after"]) >= 1
        r = _http("POST", url, json_body={"model": "m", "prompt": "c", "max_tokens": 20})  # fits: admitted
        assert r.status_code == 200
        holder.join(timeout=120)
        waiting.join(timeout=120)
