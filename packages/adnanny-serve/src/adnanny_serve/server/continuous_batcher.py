"""The server's continuous batcher: :class:`~adnanny_serve.engines.continuous.ContinuousScheduler` on an engine
thread, with the same interface as :class:`~adnanny_serve.server.batcher.Batcher` (admission, 429, cancellation,
streaming, metrics).

Requests with different sampling parameters and seeds share the running batch; a request's prompts join it as
soon as there is room (``max_batch`` running sequences) and leave it the step they finish, so a short label
request never waits for a long reasoning one to end. Each sample of a seeded request has its own generator
(:func:`~adnanny_serve.engines.continuous.sample_seed`), so a seed reproduces its samples whatever else runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams
from adnanny_serve.server.batcher import Overloaded, Unavailable, _Req, check_token_budget

__all__ = ["ContinuousBatcher"]


class ContinuousBatcher:
    """Continuous batching behind the Batcher interface (see the module docstring)."""

    def __init__(self, engine: Any, *, max_batch: int = 8, max_queue: int = 64, batch_wait_s: float = 0.0,
                 max_queue_tokens: int | None = None):
        from adnanny_serve.engines.continuous import ContinuousScheduler

        self.engine = engine
        self.max_queue_tokens = max_queue_tokens
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.sched = ContinuousScheduler(engine, max_batch=max_batch)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[_Req] = set()
        self.avg_batch_seconds = 1.0
        self.batches = 0  # decoding steps
        self.served = 0
        self.cancelled = 0
        self.refused = 0
        self.completion_tokens = 0
        self.engine_seconds = 0.0
        self.last_batch_size = 0
        self.running_prompts = 0
        self._step_s = 0.05

    @property
    def queued(self) -> int:
        return self.sched.waiting

    @property
    def queued_tokens(self) -> int:
        return self.sched.waiting_cost

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="adnanny-engine", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        for r in list(self._pending):
            r.cancelled = True
            if not r.future.done():
                r.future.set_exception(Unavailable("server is shutting down"))
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)

    def retry_after(self) -> int:
        # a waiting prompt starts when a running one finishes: about one average sequence time per batch ahead
        ahead = max(1, self.queued // max(1, self.max_batch))
        return max(1, int(round(ahead * self.avg_batch_seconds)))

    def admit(self, prompts: list[str], params: SamplingParams, *, on_tokens: Any = None, cost: int = 0) -> _Req:
        from adnanny_serve.engines.continuous import Sequence, sample_seed

        if not self._running or self._loop is None:
            raise Unavailable("the generation engine is not running")
        free = self.max_queue - self.queued
        if len(prompts) > free:
            self.refused += 1
            raise Overloaded(self.retry_after(), len(prompts), max(free, 0))
        check_token_budget(self, cost)
        loop = self._loop
        fut: asyncio.Future[list[Generation]] = loop.create_future()
        req = _Req(list(prompts), params, fut, time.monotonic(), on_tokens=on_tokens)
        results: list[Generation | None] = [None] * len(prompts)
        left = [len(prompts)]

        def done(j: int, g: Generation) -> None:  # engine thread
            results[j] = g
            self.completion_tokens += g.completion_tokens
            left[0] -= 1
            if left[0] == 0:
                dt = time.monotonic() - req.t_enqueued
                self.avg_batch_seconds = 0.8 * self.avg_batch_seconds + 0.2 * dt
                loop.call_soon_threadsafe(self._resolve, req, results)

        self._pending.add(req)
        for j, prompt in enumerate(prompts):  # tokenized on the engine thread when it joins, not on the loop
            self.sched.add(Sequence(
                None, params, done=lambda g, j=j: done(j, g), prompt=prompt, cost=cost // max(1, len(prompts)),
                seed=None if params.seed is None else sample_seed(params.seed, j),
                cancelled=lambda: req.cancelled,
                on_tokens=None if on_tokens is None else (lambda ids, j=j: on_tokens(j, ids))))
        self._wake.set()
        return req

    def _resolve(self, req: _Req, results: list[Generation | None]) -> None:
        self._pending.discard(req)
        if req.cancelled or req.future.done():
            return
        self.served += len(results)
        req.future.set_result(results)  # type: ignore[arg-type]

    async def wait(self, req: _Req) -> list[Generation]:
        try:
            return await asyncio.shield(req.future)
        except asyncio.CancelledError:
            if not req.cancelled and not req.future.done():
                req.cancelled = True  # a waiting sequence is dropped at join, a running one at the next step
                self.cancelled += len(req.prompts)
                self._pending.discard(req)
            raise

    async def submit_many(self, prompts: list[str], params: SamplingParams, *, on_tokens: Any = None,
                          cost: int = 0) -> list[Generation]:
        return await self.wait(self.admit(prompts, params, on_tokens=on_tokens, cost=cost))

    async def submit(self, prompt: str, params: SamplingParams) -> Generation:
        return (await self.submit_many([prompt], params))[0]

    def _run(self) -> None:
        while self._running:
            if self.sched.idle():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            t0 = time.monotonic()
            try:
                self.sched.step()
            except Exception as e:  # an engine failure fails what is running, not the server
                failed = list(self.sched.active)
                self.sched.active, self.sched._cache, self.sched._mask, self.sched._next = [], None, None, None
                loop = self._loop
                for r in list(self._pending):
                    if loop is not None and not r.future.done():
                        loop.call_soon_threadsafe(_fail, r.future, e)
                self._pending.clear()
                del failed
                continue
            self.engine_seconds += time.monotonic() - t0
            self.batches += 1
            self.running_prompts = self.last_batch_size = len(self.sched.active)
        self.running_prompts = 0


def _fail(fut: asyncio.Future[Any], e: Exception) -> None:
    if not fut.done():
        fut.set_exception(e)
