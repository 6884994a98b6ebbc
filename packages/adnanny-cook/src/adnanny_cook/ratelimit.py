"""Requests-per-minute and tokens-per-minute limits as async token buckets.

Each bucket refills continuously at `limit/60` per second and holds at most one second's worth (never less than
one request / one request's tokens), so a burst after idle time cannot exceed the provider's per-minute quota.
Token use is estimated before a call and corrected with the reported usage afterwards (`settle`).
"""

from __future__ import annotations

import asyncio
import time

from adnanny_cook.errors import ConfigError

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        if per_minute <= 0:
            raise ConfigError(f"`per_minute` must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, burst if burst is not None else self.rate)
        self.level = self.capacity
        self.t = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Wait until `amount` is available and take it; return the seconds waited."""
        waited = 0.0
        # An oversized request waits for a full bucket, then leaves it in debt (later calls wait it off).
        take = min(amount, self.capacity)
        async with self._lock:
            while True:
                self._refill()
                if self.level >= take:
                    self.level -= amount
                    return waited
                dt = (take - self.level) / self.rate
                waited += dt
                await asyncio.sleep(dt)

    def debit(self, amount: float) -> None:
        """Take (or give back, if negative) tokens after the fact; the level may go below zero."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


class RateLimiter:
    def __init__(self, rpm: float = 0, tpm: float = 0) -> None:
        self.requests = TokenBucket(rpm) if rpm > 0 else None
        self.tokens = TokenBucket(tpm, burst=max(tpm / 60.0, 1.0)) if tpm > 0 else None
        self.waited_s = 0.0

    async def acquire(self, est_tokens: int) -> None:
        if self.requests is not None:
            self.waited_s += await self.requests.acquire(1.0)
        if self.tokens is not None:
            self.waited_s += await self.tokens.acquire(float(est_tokens))

    def settle(self, est_tokens: int, used_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.debit(float(used_tokens - est_tokens))
