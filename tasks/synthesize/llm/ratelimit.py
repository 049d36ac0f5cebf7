"""Client-side requests- and tokens-per-minute limits (token buckets).

Providers enforce RPM/TPM over short sub-minute windows (a 60 RPM limit behaves like one request
per second), so each bucket holds at most one second's worth of its rate, never a minute's burst.
A request larger than the bucket waits for a full bucket and then takes it below zero: big
prompts still go through, just not faster than the rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.rate = per_minute / 60.0  # units per second
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, amount: float = 1.0) -> float:
        """Take ``amount`` units, waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        need = min(amount, self.capacity)
        async with self._lock:  # FIFO: one waiter at a time, so big requests cannot starve
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return waited
                delay = (need - self.level) / self.rate
                await self._sleep(delay)
                waited += delay

    def refund(self, amount: float) -> None:
        """Give back units taken on an estimate that turned out too high (or take more if < 0)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Both limits together; either may be off (None)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None):
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def acquire(self, est_tokens: int) -> float:
        waited = 0.0
        if self.requests:
            waited += await self.requests.acquire(1.0)
        if self.tokens:
            waited += await self.tokens.acquire(float(est_tokens))
        return waited

    def settle(self, est_tokens: int, actual_tokens: int | None) -> None:
        """Correct the token bucket once the real usage is known."""
        if self.tokens and actual_tokens is not None:
            self.tokens.refund(float(est_tokens - actual_tokens))
