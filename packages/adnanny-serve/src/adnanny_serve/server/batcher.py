"""Request batching with a bounded queue.

HTTP handlers ``submit`` one prompt each and await a future. One asyncio loop task collects up to
``max_batch`` pending requests that share the same :class:`SamplingParams` (an engine call takes one set of
params), waiting at most ``batch_wait_s`` for a batch to fill, and runs ``engine.generate`` on a single worker
thread (the model is not re-entrant; the event loop stays free to accept and refuse requests meanwhile).

Overload is answered, not absorbed: when ``max_queue`` requests already wait, ``submit`` raises
:class:`Overloaded` at once (the server turns it into 429 with ``Retry-After``); while the batcher is stopped
or the engine has failed it raises :class:`Unavailable` (503).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass
from typing import Any

from adnanny_serve.engines.base import Generation, SamplingParams

__all__ = ["Batcher", "Overloaded", "Unavailable"]


class Overloaded(Exception):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"server overloaded: request queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class Unavailable(Exception):
    """The batcher is not running (starting, stopping, or its engine failed)."""


@dataclass
class _Req:
    prompt: str
    params: SamplingParams
    future: asyncio.Future[Generation]
    t_enqueued: float


class Batcher:
    """Batches concurrent requests into ``engine.generate`` calls (see module docstring)."""

    def __init__(self, engine: Any, *, max_batch: int = 8, max_queue: int = 64, batch_wait_s: float = 0.005):
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self._pending: collections.deque[_Req] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="adnanny-engine")
        self._running = False
        self.avg_batch_seconds = 1.0  # for Retry-After estimates
        self.batches = 0
        self.served = 0

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._running = True
        self._task = asyncio.create_task(self._loop(), name="adnanny-batcher")

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        while self._pending:
            r = self._pending.popleft()
            if not r.future.done():
                r.future.set_exception(Unavailable("server is shutting down"))
        self._pool.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch (at least 1)."""
        batches_ahead = max(1, len(self._pending) // max(1, self.max_batch))
        return max(1, int(round(batches_ahead * self.avg_batch_seconds)))

    async def submit(self, prompt: str, params: SamplingParams) -> Generation:
        if not self._running or self._wake is None:
            raise Unavailable("the generation engine is not running")
        if len(self._pending) >= self.max_queue:
            raise Overloaded(self.retry_after())
        fut: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self._pending.append(_Req(prompt, params, fut, time.monotonic()))
        self._wake.set()
        return await fut

    def _take_batch(self) -> list[_Req]:
        first = self._pending.popleft()
        batch, keep = [first], collections.deque()
        while self._pending and len(batch) < self.max_batch:
            r = self._pending.popleft()
            (batch if r.params == first.params else keep).append(r)
        keep.extend(self._pending)
        self._pending = keep
        return [r for r in batch if not r.future.cancelled()]

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while self._running:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._pending) < self.max_batch and self.batch_wait_s > 0:
                await asyncio.sleep(self.batch_wait_s)  # let concurrent requests join the batch
            batch = self._take_batch()
            if not batch:
                continue
            t0 = time.monotonic()
            try:
                gens = await loop.run_in_executor(
                    self._pool, self.engine.generate, [r.prompt for r in batch], batch[0].params
                )
            except Exception as e:  # an engine error fails this batch's requests, not the server
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                continue
            dt = time.monotonic() - t0
            self.avg_batch_seconds = 0.8 * self.avg_batch_seconds + 0.2 * dt
            self.batches += 1
            self.served += len(batch)
            for r, g in zip(batch, gens):
                if not r.future.done():
                    r.future.set_result(g)
