"""The teacher client against a real HTTP server (stub_teacher) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from stub_teacher import StubTeacher  # noqa: E402

from adnanny_cook.client import TeacherClient  # noqa: E402
from adnanny_cook.errors import TeacherError  # noqa: E402
from adnanny_cook.tasks import get_task  # noqa: E402

QA = get_task("query_ad")
LABELS = {"label": "good", "location_label": "good", "quality_label": "good"}


def _msgs(i: int) -> list[dict[str, str]]:
    row = {"query": f"hotel number {i}", "ad_title": "Hotel", "ad_description": "Nice rooms", "ad_url": "h.com"}
    return QA.reasoning_messages(row, LABELS)


async def _run(client: TeacherClient, n: int, start: int = 0) -> list:
    async with client:
        return await asyncio.gather(*(client.complete(_msgs(i), params={"temperature": 0.0, "seed": 0})
                                      for i in range(start, start + n)))


def test_retries_on_429_500_and_slow_answers(tmp_path: Path) -> None:
    with StubTeacher(p429=0.2, p500=0.2, p_timeout=0.1, stall_s=1.5, retry_after="0.05", bad_rate=0.0) as s:
        c = TeacherClient(base_url=s.base_url, model="m", concurrency=8, timeout_s=0.5, backoff_base_s=0.01,
                          backoff_max_s=0.05, cache_path=str(tmp_path / "c.sqlite"))
        events: list[str] = []
        c.add_listener(events.append)
        res = asyncio.run(_run(c, 60))
        assert len(res) == 60 and all(QA.parse(r.text).labels == LABELS for r in res)
        st = c.stats
        # every scripted fault was retried and the request then succeeded
        assert s.status[429] > 0 and s.status[500] > 0 and s.status[504] > 0
        assert st.errors["RateLimitError"] == s.status[429]
        # a stall past `timeout_s` on a live server is waited for (probed, not re-sent) until the server answers
        assert st.errors["InternalServerError"] == s.status[500] + s.status[504]
        assert "APITimeoutError" not in st.errors and st.slow >= s.status[504] and s.probes >= st.slow
        assert st.retries == s.status[429] + s.status[500] + s.status[504]
        assert st.ok == 60 and s.status[200] == 60 and s.repeated_successes() == 0
        assert st.prompt_tokens > 0 and st.completion_tokens > 0
        # one event per finished call, per retry and per call that went slow
        assert events.count("done") == 60 and events.count("retry") == st.retries and events.count("slow") == st.slow
        assert st.in_flight == 0 and st.waiting == 0


def test_a_queue_that_outlasts_the_timeout_sees_no_duplicate_work() -> None:
    """The issue-11 retry storm: a server that computes 2 requests at a time, 0.15 s each, and 16 requests from a
    client with 8 in flight and a 0.2 s timeout: the last ones wait ~0.6 s in the server's queue."""
    n = 16
    with StubTeacher(slots=2, latency_s=0.15, bad_rate=0.0) as s:
        c = TeacherClient(base_url=s.base_url, model="m", concurrency=8, timeout_s=0.2, backoff_base_s=0.01)
        res = asyncio.run(_run(c, n))
        assert len(res) == n and all(QA.parse(r.text).labels == LABELS for r in res)
        assert s.status[200] == n and set(s.attempts.values()) == {1} and set(s.successes.values()) == {1}
        assert c.stats.calls == n and c.stats.retries == 0 and c.stats.slow > 0 and s.probes > 0
        assert s.queue_peak <= 8 - 2          # the server's queue never holds more than this client's in-flight
    # the same server and timeout with a blind re-send on timeout (the SDK's own retry) computes work twice
    with StubTeacher(slots=2, latency_s=0.15, bad_rate=0.0) as s:
        import openai

        async def blind() -> None:
            cl = openai.AsyncOpenAI(base_url=s.base_url, api_key="x", timeout=0.2, max_retries=1)
            sem = asyncio.Semaphore(8)

            async def one(i: int) -> None:
                async with sem:
                    try:
                        await cl.chat.completions.create(model="m", messages=_msgs(i), temperature=0.0, seed=0)
                    except openai.APITimeoutError:
                        pass
            await asyncio.gather(*(one(i) for i in range(8)))
            await cl.close()
        asyncio.run(blind())
        deadline = time.monotonic() + 10       # the server still computes what the client gave up on
        while sum(s.successes.values()) < sum(s.attempts.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.repeated_successes() > 0 and max(s.attempts.values()) > 1


def test_a_live_server_past_max_wait_is_not_sent_the_request_again() -> None:
    with StubTeacher(slots=1, latency_s=1.2, bad_rate=0.0) as s:
        c = TeacherClient(base_url=s.base_url, model="m", timeout_s=0.2, max_wait_s=0.4, backoff_base_s=0.01)
        with pytest.raises(TeacherError, match=r"is up but did not answer a request within `max_wait_s` \(0.4 s\); "
                                               r"it was not re-sent") as ei:
            asyncio.run(_run(c, 1))
        assert ei.value.retryable and c.stats.abandoned == 1 and c.stats.calls == 1
        time.sleep(1.2)
        assert sum(s.attempts.values()) == 1   # the server saw it once (and finished it once)


def test_a_server_that_stops_answering_is_probed_then_retried() -> None:
    import socket

    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)                            # accepts TCP connections (kernel backlog) and never answers
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/v1"
        c = TeacherClient(base_url=url, model="m", timeout_s=0.2, max_retries=1, backoff_base_s=0.01)
        with pytest.raises(TeacherError, match=r"failed after 2 attempts \(ServerUnresponsive: no answer within "
                                               r"0.2 s and the server did not answer a probe\)") as ei:
            asyncio.run(_run(c, 1))
        assert ei.value.retryable and c.stats.errors["ServerUnresponsive"] == 2 and c.stats.retries == 1
        assert c.stats.probes == 2 and c.stats.in_flight == 0
    finally:
        hung.close()


def test_retry_after_is_honored() -> None:
    with StubTeacher(p429=1.0, retry_after="0.4") as s:
        c = TeacherClient(base_url=s.base_url, model="m", backoff_base_s=0.001, backoff_max_s=5.0)
        t0 = time.perf_counter()
        asyncio.run(_run(c, 1))
        assert time.perf_counter() - t0 >= 0.4
        assert c.stats.retries == 1


def test_exhausted_retries_and_non_retryable_errors() -> None:
    with StubTeacher(p500=1.0) as s:
        c = TeacherClient(base_url=s.base_url, model="m", max_retries=0, backoff_base_s=0.001)
        with pytest.raises(TeacherError, match="failed after 1 attempts .*InternalServerError") as ei:
            asyncio.run(_run(c, 1))
        assert ei.value.retryable
    with StubTeacher() as s:
        c = TeacherClient(base_url=s.base_url.replace("/v1", "/nope"), model="m", backoff_base_s=0.001)
        with pytest.raises(TeacherError, match="HTTP 404 \\(not retryable\\)") as ei:
            asyncio.run(_run(c, 1))
        assert not ei.value.retryable and c.stats.calls == 1


def test_rate_limit_caps_requests_per_minute() -> None:
    with StubTeacher() as s:
        c = TeacherClient(base_url=s.base_url, model="m", concurrency=16, rpm=600)  # 10 requests/s
        t0 = time.perf_counter()
        asyncio.run(_run(c, 25))
        elapsed = time.perf_counter() - t0
        times = sorted(s.times)
        # the bucket holds 1 s worth (10) and refills at 10/s: 25 requests need >= 1.5 s, and no 1 s window
        # may see more than a full bucket plus one second of refill
        assert elapsed >= 1.45
        assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) <= 21
        assert c.stats.rate_limit_wait_s > 1.0


def test_cache_makes_reruns_free_and_single_flight_dedupes(tmp_path: Path) -> None:
    with StubTeacher() as s:
        path = str(tmp_path / "c.sqlite")
        a = asyncio.run(_run(TeacherClient(base_url=s.base_url, model="m", cache_path=path), 10))
        assert s.status[200] == 10
        c2 = TeacherClient(base_url=s.base_url, model="m", cache_path=path)
        b = asyncio.run(_run(c2, 10))
        assert s.status[200] == 10 and c2.stats.cache_hits == 10 and c2.stats.calls == 0
        assert [x.text for x in a] == [x.text for x in b] and all(x.cached for x in b)
        # a different sampling parameter is a different request
        c3 = TeacherClient(base_url=s.base_url, model="m", cache_path=path)

        async def other() -> None:
            async with c3:
                await c3.complete(_msgs(0), params={"temperature": 0.5, "seed": 0})
        asyncio.run(other())
        assert s.status[200] == 11
        # identical requests in flight together share one call
        c4 = TeacherClient(base_url=s.base_url, model="m", concurrency=4)

        async def same() -> list:
            async with c4:
                return await asyncio.gather(*(c4.complete(_msgs(99)) for _ in range(5)))
        out = asyncio.run(same())
        assert s.status[200] == 12 and len({o.text for o in out}) == 1 and c4.stats.calls == 1


def test_reasoning_content_field_is_folded_into_think() -> None:
    """vLLM/DeepSeek reasoning parsers return the trace separately; the client rebuilds <think>...</think>."""
    import json

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    import socket
    import threading

    async def chat(request):  # type: ignore[no-untyped-def]
        await request.json()
        return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                 "role": "assistant", "reasoning_content": "The user wants a hotel.",
                                 "content": "<Label>Good</Label><LocationLabel>Good</LocationLabel>"
                                            "<AdQuality>Good</AdQuality>"}}],
                             "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/chat/completions", chat,
                                                                   methods=["POST"])]), log_level="error",
                                           lifespan="off"))
    th = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)
    try:
        c = TeacherClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", model="m",
                          price_in_per_mtok=1.0, price_out_per_mtok=2.0)
        r = asyncio.run(_run(c, 1))[0]
        p = QA.parse(r.text, mode="reasoning")
        assert p.reasoning == "The user wants a hotel." and p.labels == LABELS
        assert c.stats.cost_usd == pytest.approx((3 * 1.0 + 4 * 2.0) / 1e6)
        json.dumps(c.stats.as_dict())
    finally:
        server.should_exit = True
        th.join(5)


def test_cache_key_includes_base_url(tmp_path: Path) -> None:
    """Two endpoints serving the same model name are different teachers: one cache never answers for both."""
    path = str(tmp_path / "c.sqlite")
    with StubTeacher() as s1, StubTeacher() as s2:
        asyncio.run(_run(TeacherClient(base_url=s1.base_url, model="m", cache_path=path), 3))
        other = TeacherClient(base_url=s2.base_url, model="m", cache_path=path)
        asyncio.run(_run(other, 3))
        assert other.stats.cache_hits == 0 and s2.status[200] == 3
        # the same endpoint spelled with a trailing slash is the same teacher
        again = TeacherClient(base_url=s1.base_url + "/", model="m", cache_path=path)
        asyncio.run(_run(again, 3))
        assert again.stats.cache_hits == 3 and s1.status[200] == 3
    a = TeacherClient(base_url="http://a/v1", model="m")
    assert a.key(_msgs(0), {}) != TeacherClient(base_url="http://b/v1", model="m").key(_msgs(0), {})
