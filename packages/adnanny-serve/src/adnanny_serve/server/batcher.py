"""Request batching with a bounded queue, all-or-nothing admission and cancellation.

HTTP handlers ``submit`` one request — one or more prompts (a multi-prompt ``/v1/completions``, or ``n``
samples of one prompt) — and await a future. One asyncio loop task collects pending requests that share the
same :class:`SamplingParams` (an engine call takes one set of params) up to ``max_batch`` prompts, waiting at
most ``batch_wait_s`` for a batch to fill, and runs ``engine.generate`` on a single worker thread (the model is
not re-entrant; the event loop stays free to accept and refuse requests meanwhile).

Seeded requests run alone: ``torch.manual_seed(seed)`` seeds one generator for the whole engine call, so a
seeded request that shared a batch with another would get samples that depend on its neighbours. Alone, the
same seed gives the same ``n`` samples every time (and they differ from each other: one generator, n draws).

Overload is answered, not absorbed: the queue is counted in prompts (and, with ``max_queue_tokens``, in prompt +
``max_tokens`` tokens), and a request whose prompts do not all fit is refused whole with :class:`Overloaded`
(the server turns it into 429 with ``Retry-After``) — never half queued. While the batcher is stopped or the engine has failed it raises :class:`Unavailable` (503).

Cancellation: when the awaiting handler is cancelled (its HTTP client disconnected), the request is marked
cancelled: still queued, it is dropped before it reaches the engine; running, the engine is told through its
``cancelled(i)`` callback (checked after every decoding step) and stops spending steps on it.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import time
from dataclasses import dataclass, field
from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams

__all__ = ["Batcher", "Overloaded", "Unavailable"]


class Overloaded(Exception):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int, need: int = 1, free: int = 0):
        what = f"request queue full ({need} prompts asked, {free} places free)" if need > 1 else "request queue full"
        super().__init__(f"server overloaded: {what}, retry after {retry_after}s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """The batcher is not running (starting, stopping, or its engine failed)."""


def check_token_budget(batcher: Any, cost: int) -> None:
    """Refuse (:class:`Overloaded`) a request whose tokens would push the waiting ones past ``max_queue_tokens``.

    A request is always admitted into an empty queue, so one larger than the whole budget is slow, not
    refused forever (the per-request limits bound it)."""
    budget = batcher.max_queue_tokens
    if budget is None or batcher.queued == 0:
        return
    waiting = batcher.queued_tokens
    if waiting + cost > budget:
        batcher.refused += 1
        e = Overloaded(batcher.retry_after())
        e.args = (f"server overloaded: {waiting} tokens already queued, this request needs {cost}, the budget is "
                  f"{budget}; retry after {e.retry_after}s",)
        raise e


@dataclass(eq=False)  # identity: a request is itself, never equal to another with the same prompts
class _Req:
    prompts: list[str]
    params: SamplingParams
    future: asyncio.Future[list[Generation]]
    t_enqueued: float
    cancelled: bool = False  # set on the loop thread, read by the engine thread (a plain bool: atomic)
    results: list[Generation] = field(default_factory=list)
    on_tokens: Any = None  # (sample index in this request, token ids so far), called on the engine thread
    cost: int = 0  # prompt tokens + max_tokens of all its prompts: what it will ask of the engine


class Batcher:
    """Batches concurrent requests into ``engine.generate`` calls (see module docstring)."""

    def __init__(self, engine: Any, *, max_batch: int = 8, max_queue: int = 64, batch_wait_s: float = 0.005,
                 max_queue_tokens: int | None = None):
        self.engine = engine
        self.max_queue_tokens = max_queue_tokens
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self._pending: collections.deque[_Req] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adnanny-engine")
        self._running = False
        try:
            sig = inspect.signature(engine.generate).parameters
        except (TypeError, ValueError):
            sig = {}
        self._engine_cancels = "cancelled" in sig
        self._engine_streams = "on_tokens" in sig
        self.avg_batch_seconds = 1.0  # for Retry-After estimates
        self.batches = 0
        self.served = 0  # prompts generated
        self.cancelled = 0  # prompts whose client went away (dropped from the queue or stopped in the engine)
        self.refused = 0  # requests answered Overloaded (429)
        self.completion_tokens = 0
        self.engine_seconds = 0.0
        self.last_batch_size = 0
        self.running_prompts = 0

    @property
    def queued(self) -> int:
        """Prompts waiting (not yet in the engine)."""
        return sum(len(r.prompts) for r in self._pending)

    @property
    def queued_tokens(self) -> int:
        """Prompt + budget tokens of the waiting requests (what ``max_queue_tokens`` bounds)."""
        return sum(r.cost for r in self._pending)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._running = True
        self._task = asyncio.create_task(self._loop(), name="adnanny-batcher")

    async def stop(self) -> None:
        """Refuse new work, fail what is queued with :class:`Unavailable`, let the running batch finish."""
        self._running = False
        while self._pending:
            r = self._pending.popleft()
            if not r.future.done():
                r.future.set_exception(Unavailable("server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._pool.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch (at least 1)."""
        batches_ahead = max(1, self.queued // max(1, self.max_batch))
        return max(1, int(round(batches_ahead * self.avg_batch_seconds)))

    async def submit_many(self, prompts: list[str], params: SamplingParams, *,
                          on_tokens: Any = None, cost: int = 0) -> list[Generation]:
        """Generate for all ``prompts`` (admitted all together or refused all together).

        ``on_tokens(j, token_ids)``: progress of prompt ``j`` after each decoding step (engines that support it;
        called on the engine thread — hand it to the loop with ``call_soon_threadsafe``)."""
        return await self.wait(self.admit(prompts, params, on_tokens=on_tokens, cost=cost))

    def admit(self, prompts: list[str], params: SamplingParams, *, on_tokens: Any = None, cost: int = 0) -> _Req:
        """Queue all ``prompts`` now or raise (:class:`Overloaded` / :class:`Unavailable`) — the synchronous half
        of :meth:`submit_many`, so a streaming handler can still answer 429 before it starts its 200 stream."""
        if not self._running or self._wake is None:
            raise Unavailable("the generation engine is not running")
        free = self.max_queue - self.queued
        if len(prompts) > free:
            self.refused += 1
            raise Overloaded(self.retry_after(), len(prompts), max(free, 0))
        check_token_budget(self, cost)
        fut: asyncio.Future[list[Generation]] = asyncio.get_running_loop().create_future()
        req = _Req(list(prompts), params, fut, time.monotonic(), on_tokens=on_tokens, cost=cost)
        self._pending.append(req)
        self._wake.set()
        return req

    async def wait(self, req: _Req) -> list[Generation]:
        """The generations of an admitted request; cancelling this wait cancels the request."""
        fut = req.future
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if not req.cancelled and not fut.done():
                req.cancelled = True
                self.cancelled += len(req.prompts)
                if req in self._pending:
                    self._pending.remove(req)
            raise

    async def submit(self, prompt: str, params: SamplingParams) -> Generation:
        """One prompt, one generation."""
        return (await self.submit_many([prompt], params))[0]

    def _take_batch(self) -> list[_Req]:
        first = self._pending.popleft()
        batch, keep = [first], collections.deque()
        size = len(first.prompts)
        exclusive = first.params.seed is not None and first.params.temperature > 0
        while self._pending and not exclusive:
            r = self._pending.popleft()
            if (r.params == first.params and size + len(r.prompts) <= self.max_batch
                    and not (r.params.seed is not None and r.params.temperature > 0)):
                batch.append(r)
                size += len(r.prompts)
            else:
                keep.append(r)
        keep.extend(self._pending)
        self._pending = keep
        return [r for r in batch if not r.cancelled and not r.future.done()]

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while self._running:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.queued < self.max_batch and self.batch_wait_s > 0:
                await asyncio.sleep(self.batch_wait_s)  # let concurrent requests join the batch
                if not self._pending:
                    continue
            batch = self._take_batch()
            if not batch:
                continue
            prompts = [p for r in batch for p in r.prompts]
            owner = [r for r in batch for _ in r.prompts]
            kwargs: dict[str, Any] = {"cancelled": lambda i: owner[i].cancelled} if self._engine_cancels else {}
            if self._engine_streams and any(r.on_tokens is not None for r in batch):
                local = [j for r in batch for j in range(len(r.prompts))]  # index of each prompt in its request

                def on_tokens(i: int, ids: list[int]) -> None:
                    if owner[i].on_tokens is not None and not owner[i].cancelled:
                        owner[i].on_tokens(local[i], ids)

                kwargs["on_tokens"] = on_tokens
            t0 = time.monotonic()
            self.running_prompts = len(prompts)
            try:
                gens = await loop.run_in_executor(
                    self._pool, lambda: self.engine.generate(prompts, batch[0].params, **kwargs))
            except Exception as e:  # an engine error fails this batch's requests, not the server
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            finally:
                self.running_prompts = 0
            dt = time.monotonic() - t0
            self.avg_batch_seconds = 0.8 * self.avg_batch_seconds + 0.2 * dt
            self.engine_seconds += dt
            self.batches += 1
            self.last_batch_size = len(prompts)
            for r, g in zip(owner, gens):
                r.results.append(g)
                self.completion_tokens += g.completion_tokens
            for r in batch:
                if r.cancelled:
                    continue
                self.served += len(r.prompts)
                if not r.future.done():
                    r.future.set_result(r.results)
