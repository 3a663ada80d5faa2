"""Per-provider limits: a token bucket for ``rate`` and a durable ``daily_limit``.

The bucket lets at most ``capacity`` messages go at once (one second's worth
of the rate, at least one), then one every ``1/rate`` seconds. Tokens are
*reserved*: a caller learns how long its token takes to arrive, so a burst is
spread into an exact schedule rather than a thundering retry.

The daily limit counts messages per UTC day in the spool's durable counters
(window = the UTC date), so a restart does not reset it. A slot is reserved
(in memory at once, then in the spool) *before* sending and given back if
nothing was delivered: a crash can only over-count, never send over the cap.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Callable
from typing import Protocol

from relay.config import Rate

__all__ = ["Counters", "DailyLimit", "TokenBucket", "utc_window"]


class Counters(Protocol):
    """What the daily limit needs from the spool."""

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int: ...

    async def counter_get(self, name: str, window: str) -> int: ...


def utc_window(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def next_utc_midnight(now: float) -> float:
    day = time.gmtime(now)
    return float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)) + 86400)


class TokenBucket:
    def __init__(self, rate: Rate, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, min(float(rate.count), rate.per_second))
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate.per_second)
        self._stamp = now

    def reserve(self, max_wait: float) -> float | None:
        """Take a token; return the seconds until it is usable, or ``None`` if over ``max_wait``."""
        self._refill()
        wait = max(0.0, (1.0 - self._tokens) / self.rate.per_second)
        if wait > max_wait:
            return None
        self._tokens -= 1.0
        return wait

    def refund(self) -> None:
        self._tokens = min(self.capacity, self._tokens + 1.0)

    def next_free(self) -> float:
        """Seconds until a token is available without waiting."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate.per_second)


class DailyLimit:
    """Messages sent through one provider today (UTC), durable when given ``counters``."""

    def __init__(
        self,
        provider_id: str,
        counters: Counters | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = f"provider:{provider_id}:messages"
        self._counters = counters
        self._clock = clock
        self._lock = asyncio.Lock()
        self._window = ""
        self._count = 0

    async def _load(self, window: str) -> None:
        if self._window != window:
            async with self._lock:
                if self._window != window:
                    stored = 0
                    if self._counters is not None:
                        stored = await self._counters.counter_get(self.name, window)
                    self._window, self._count = window, stored

    async def used(self) -> int:
        await self._load(utc_window(self._clock()))
        return self._count

    async def reserve(self, limit: int | None) -> float | None:
        """Take one message slot; return when the window resets if the limit is reached."""
        now = self._clock()
        window = utc_window(now)
        await self._load(window)
        if limit is not None and self._count >= limit:
            return next_utc_midnight(now)
        self._count += 1  # in memory first: concurrent callers see it before the commit
        if self._counters is not None:
            try:
                await self._counters.counter_add(self.name, window, 1)
            except BaseException:
                self._count -= 1
                raise
        return None

    async def give_back(self) -> None:
        """Nothing was delivered: return the slot taken by ``reserve``."""
        window = utc_window(self._clock())
        if window != self._window or self._count <= 0:
            return  # a new day began meanwhile; today's count never included it
        self._count -= 1
        if self._counters is not None:
            await self._counters.counter_add(self.name, window, -1)
