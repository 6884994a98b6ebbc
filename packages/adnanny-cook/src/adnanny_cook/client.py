"""Async teacher client over the official `openai` SDK, for any OpenAI-compatible `base_url`.

What it adds around `AsyncOpenAI.chat.completions.create`:
* a concurrency cap (semaphore) and RPM/TPM token buckets (`ratelimit`);
* retries with exponential backoff + full jitter on 429, 5xx and connection failures, honoring `Retry-After`
  (the SDK's own retries are off, so every attempt is counted and bounded here);
* a timeout that cannot outrun a slow server's queue (below);
* a persistent SQLite response cache (`cache`): a cached request makes no call at all;
* token and cost accounting, and per-call events for a progress bar (`add_listener`).

Timeouts. A request that was sent and not yet answered may be waiting in the server's queue or running; closing
it and sending it again makes the server compute it twice and lengthens the very queue that made it slow (the
retry storm of issue 11). So `timeout_s` is not a deadline for the answer: when it passes, the client probes the
server (`GET {base_url}/models`, any HTTP answer counts) and, if the server is up, keeps waiting for the same
request (counted in `stats.slow`, shown by the progress bar), never re-sending it. Only a server that does not
answer the probe (down or hung: its queue is gone or stuck) gets the request again, after backoff. A request
still unanswered after `max_wait_s` on a live server is given up WITHOUT a re-send (`TeacherError`, retryable:
the pipeline leaves its chunk unfinished and a rerun asks again). Sizing: a server that runs P requests at once
at S seconds each answers this client's C in-flight requests within about ceil(C / P) * S seconds (plus other
clients' queue); set `timeout_s` above that to avoid probes, and `max_wait_s` well above it.

Reasoning models served by vLLM/DeepSeek return the trace in `message.reasoning_content`; it is folded back as
``<think>…</think>`` before the content so the task parser sees one text.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adnanny_cook.cache import ResponseCache, request_key
from adnanny_cook.errors import ConfigError, TeacherError
from adnanny_cook.ratelimit import RateLimiter

__all__ = ["EVENTS", "Completion", "TeacherClient", "TeacherStats"]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    attempts: int = 0
    finish_reason: str | None = None


@dataclass
class TeacherStats:
    calls: int = 0            # HTTP attempts sent
    ok: int = 0               # successful responses
    cache_hits: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    rate_limit_wait_s: float = 0.0
    slow: int = 0             # calls that outlived `timeout_s` on a live server and were waited for, not re-sent
    probes: int = 0           # liveness probes (GET /models) sent
    abandoned: int = 0        # calls given up after `max_wait_s` on a live server (not re-sent)
    in_flight: int = 0        # gauge: requests sent and not answered yet
    waiting: int = 0          # gauge: of those, the ones past `timeout_s`

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "ok": self.ok, "cache_hits": self.cache_hits, "retries": self.retries,
                "errors": dict(self.errors), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cost_usd": round(self.cost_usd, 6),
                "rate_limit_wait_s": round(self.rate_limit_wait_s, 3), "slow": self.slow, "probes": self.probes,
                "abandoned": self.abandoned}


#: Events a listener receives (`TeacherClient.add_listener`): one of "done" (an answer came back), "cached"
#: (answered from the cache or by an identical request in flight), "failed" (the call raised), per finished
#: call; and "retry" / "slow" (a call passed `timeout_s` on a live server and is still awaited) while it runs.
EVENTS = ("done", "cached", "failed", "retry", "slow")


class _Unresponsive(Exception):
    """The server did not answer a liveness probe while a request was outstanding: it is down or hung."""


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if not headers:
        return None
    for h in ("retry-after-ms", "retry-after"):
        v = headers.get(h)
        if v is None:
            continue
        try:
            s = float(v)
        except ValueError:
            return None
        return s / 1000.0 if h.endswith("ms") else s
    return None


class TeacherClient:
    """One teacher endpoint. Use as ``async with TeacherClient(...) as c: await c.complete(messages)``."""

    def __init__(self, *, base_url: str, model: str, api_key: str = "EMPTY", cache_path: str | None = None,
                 concurrency: int = 16, rpm: float = 0, tpm: float = 0, max_retries: int = 6,
                 timeout_s: float = 60.0, max_wait_s: float = 0.0, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 30.0, price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0,
                 seed: int = 0) -> None:
        """`timeout_s`: wait this long for an answer before probing the server; `max_wait_s`: the longest wait for
        one answer while the server is up (0 = 10 x `timeout_s`). See the module docstring for sizing."""
        import openai  # noqa: F401  (heavy: paid at construction, not inside the first request's latency)

        if concurrency < 1:
            raise ConfigError(f"`concurrency` must be >= 1, got {concurrency}")
        if max_retries < 0:
            raise ConfigError(f"`max_retries` must be >= 0, got {max_retries}")
        if timeout_s <= 0 or max_wait_s < 0:
            raise ConfigError(f"`timeout_s` must be > 0 and `max_wait_s` >= 0, got {timeout_s} and {max_wait_s}")
        self.base_url, self.model, self.api_key = base_url, model, api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s or 10.0 * timeout_s
        self.probe_timeout_s = min(timeout_s, 10.0)
        self._listeners: list[Callable[[str], None]] = []
        self.max_retries = max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.price_in, self.price_out = price_in_per_mtok, price_out_per_mtok
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.limiter = RateLimiter(rpm, tpm)
        self.stats = TeacherStats()
        self._sem: asyncio.Semaphore | None = None
        self._client: Any = None
        self._rng = random.Random(seed)
        self._inflight: dict[str, asyncio.Future[Completion]] = {}

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _ensure(self) -> None:
        if self._client is None:
            import openai

            # no read deadline in the transport: `_await_answer` decides (probe, keep waiting, or give up), so a
            # queued request is never closed and re-sent just because the server is busy
            self._client = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0,
                                              timeout=openai.Timeout(None, connect=min(self.timeout_s, 30.0)))
            self._sem = asyncio.Semaphore(self.concurrency)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """Call `fn(event)` for every event in `EVENTS` (a progress bar moves on "done"/"cached"/"failed")."""
        self._listeners.append(fn)

    def _emit(self, event: str) -> None:
        for fn in self._listeners:
            fn(event)

    def key(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any], variant: str = "") -> str:
        return request_key(self.model, messages, params, variant, base_url=self.base_url)

    async def complete(self, messages: Sequence[Mapping[str, str]], *, params: Mapping[str, Any] | None = None,
                       variant: str = "") -> Completion:
        """One chat completion, from the cache if this exact request finished before."""
        params = dict(params or {})
        key = self.key(messages, params, variant)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                self._emit("cached")
                return Completion(hit["text"], hit["prompt_tokens"], hit["completion_tokens"], True, key, 0,
                                  hit.get("finish_reason"))
        # single flight: identical requests in flight at once share one HTTP call
        fut = self._inflight.get(key)
        if fut is not None:
            self.stats.cache_hits += 1
            try:
                comp = await asyncio.shield(fut)
            except TeacherError:
                self._emit("failed")
                raise
            self._emit("cached")
            return Completion(comp.text, comp.prompt_tokens, comp.completion_tokens, True, key, 0,
                              comp.finish_reason)
        self._ensure()
        assert self._sem is not None
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            est = sum(len(m["content"]) for m in messages) // 4 + int(params.get("max_tokens", 256))
            async with self._sem:
                comp = await self._call_with_retries(messages, params, key, est)
            if self.cache is not None:
                # committed before the result is used (resume safety), but in a worker thread so a WAL
                # checkpoint's fsync never stalls the event loop and the other requests in flight
                await asyncio.to_thread(self.cache.put, key, {
                    "text": comp.text, "prompt_tokens": comp.prompt_tokens,
                    "completion_tokens": comp.completion_tokens, "finish_reason": comp.finish_reason})
        except BaseException as e:
            if isinstance(e, TeacherError):
                self._emit("failed")
            if not fut.done():
                if isinstance(e, asyncio.CancelledError):
                    fut.cancel()
                else:
                    fut.set_exception(e)
                    fut.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(comp)
        self._emit("done")
        return comp

    async def _alive(self) -> bool:
        """Does the server answer at all? `GET /models` (served by vLLM, SGLang, adnanny-serve and the hosted
        APIs without touching the generation queue); any HTTP status counts as up, only no answer as down."""
        import openai

        self.stats.probes += 1
        try:
            await self._client.with_options(timeout=self.probe_timeout_s, max_retries=0).models.list()
        except openai.APIStatusError:
            return True
        except openai.APIConnectionError:  # includes APITimeoutError
            return False
        return True

    async def _await_answer(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any]) -> Any:
        """Send once and wait for THIS request's answer: past `timeout_s` probe the server; while it is up keep
        waiting (up to `max_wait_s`), never re-send. Raises `_Unresponsive` when the probe gets no answer."""
        call = asyncio.ensure_future(self._client.chat.completions.create(model=self.model, messages=list(messages),
                                                                          **params))
        waited, slow = 0.0, False
        self.stats.in_flight += 1
        try:
            while True:
                done, _ = await asyncio.wait({call}, timeout=self.timeout_s)
                if done:
                    return call.result()
                waited += self.timeout_s
                if not await self._alive():
                    raise _Unresponsive(f"no answer within {waited:g} s and the server did not answer a probe")
                if call.done():
                    continue
                if waited >= self.max_wait_s:
                    self.stats.abandoned += 1
                    raise TeacherError(
                        f"teacher at {self.base_url!r} is up but did not answer a request within `max_wait_s` "
                        f"({self.max_wait_s:g} s); it was not re-sent (it may still be queued or running). Lower "
                        f"`concurrency`, or raise `timeout_s`/`max_wait_s` (see the README on sizing them)",
                        retryable=True)
                if not slow:
                    slow = True
                    self.stats.slow += 1
                    self.stats.waiting += 1
                    self._emit("slow")
        finally:
            self.stats.in_flight -= 1
            if slow:
                self.stats.waiting -= 1
            if not call.done():
                call.cancel()

    async def _call_with_retries(self, messages: Sequence[Mapping[str, str]], params: Mapping[str, Any], key: str,
                                 est: int) -> Completion:
        import openai

        attempt = 0
        while True:
            attempt += 1
            if self.limiter.requests is not None or self.limiter.tokens is not None:
                before = self.limiter.waited_s
                await self.limiter.acquire(est)
                self.stats.rate_limit_wait_s += self.limiter.waited_s - before
            self.stats.calls += 1
            try:
                resp = await self._await_answer(messages, params)
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError,
                    _Unresponsive) as e:
                # all answered, refused before queueing, or never delivered / the server is gone: safe to resend
                kind = "ServerUnresponsive" if isinstance(e, _Unresponsive) else type(e).__name__
                self.stats.errors[kind] += 1
                if attempt > self.max_retries:
                    raise TeacherError(f"teacher call failed after {attempt} attempts ({kind}: {e}); raise "
                                       f"`max_retries` (now {self.max_retries}) or check `base_url` "
                                       f"{self.base_url!r}", retryable=True) from e
                delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
                delay = self._rng.uniform(0, delay)  # full jitter
                ra = _retry_after(e)
                if ra is not None:
                    delay = max(delay, min(ra, self.backoff_max_s))
                self.stats.retries += 1
                self._emit("retry")
                await asyncio.sleep(delay)
                continue
            except openai.APIStatusError as e:
                self.stats.errors[type(e).__name__] += 1
                raise TeacherError(f"teacher returned HTTP {e.status_code} (not retryable) for model "
                                   f"{self.model!r} at {self.base_url!r}: {e}", status=e.status_code) from e
            if not resp.choices:
                self.stats.errors["NoChoices"] += 1
                raise TeacherError(f"teacher at {self.base_url!r} answered without `choices` for model "
                                   f"{self.model!r}; check the endpoint speaks the chat-completions protocol",
                                   retryable=True)
            choice = resp.choices[0]
            msg = choice.message
            content = msg.content or ""
            extra = getattr(msg, "model_extra", None) or {}
            rc = extra.get("reasoning_content") or extra.get("reasoning")
            if rc and "<think>" not in content:
                content = f"<think>\n{rc.strip()}\n</think>\n{content.lstrip()}"
            pt = resp.usage.prompt_tokens if resp.usage else 0
            ct = resp.usage.completion_tokens if resp.usage else 0
            self.stats.ok += 1
            self.stats.prompt_tokens += pt
            self.stats.completion_tokens += ct
            self.stats.cost_usd += (pt * self.price_in + ct * self.price_out) / 1e6
            self.limiter.settle(est, pt + ct)
            return Completion(content, pt, ct, False, key, attempt, choice.finish_reason)

