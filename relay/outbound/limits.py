"""Per-provider limits: a token bucket for ``rate`` and a durable ``daily_limit``.

The bucket lets at most ``capacity`` units go at once (one second's worth of
the rate, at least one), then one every ``1/rate`` seconds. A unit is a
message or, with ``rate_unit: recipients``, a recipient. Tokens are
*reserved*: a caller learns how long its first token takes to arrive, so a
burst is spread into an exact schedule rather than a thundering retry; a
caller wanting several recipients' worth gets as many as the bucket holds
then (at least one), and the rest wait.

The daily limit (``Quota``) counts messages or recipients (``limit_unit``)
in the spool's durable counters, over one of two windows (``limit_window``):

* ``utc_day``: one counter per UTC date (window = ``2026-11-30``); it resets
  at midnight UTC.
* ``rolling_24h``: one counter per 10-minute slot (window =
  ``2026-11-30T19:50``), summed over the slots of the last 24 hours, as
  Microsoft 365, Gmail and SES count. The slot holding ``now - 24h`` still
  counts, so usage is over-estimated by at most one slot, never under: the
  cap is never exceeded. A slot's units come back when it leaves the window.
  The slots are read from the spool once; afterwards a delivery costs one
  increment, and the sum is kept in memory. Slots that left the window are
  pruned from the spool when a new slot begins.

Units are reserved (in memory at once, then in the spool) *before* sending
and the ones not delivered are given back: a crash can only over-count,
never send over the cap.

On a store several nodes share (``shared``: ``spool.shared``, PostgreSQL)
the memory is not the count: each reservation under a limit is made in the
store (``counter_reserve``: the sum over the window and the increment in one
transaction under a lock), so the nodes together never pass the limit, and
``used`` reads the fleet's sum. Giving back is the same negative increment.

A provider without a ``daily_limit`` still counts (the admin's "sent
today"), but nothing depends on the count: its units are written behind,
gathered for up to ``WRITE_BEHIND`` seconds into one increment, instead of
one spool transaction per delivery. A crash may lose those last seconds of
the statistic; a limit, once configured, counts on what is written again.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from relay.config import Rate
from relay.errors import SluiceError

__all__ = [
    "SLOT_SECONDS",
    "WRITE_BEHIND",
    "Counters",
    "Grant",
    "Quota",
    "TokenBucket",
    "next_utc_midnight",
    "slot_key",
    "utc_window",
]

Unit = Literal["messages", "recipients"]
Window = Literal["utc_day", "rolling_24h"]

log = logging.getLogger("sluice.delivery")

#: the width of one rolling-window slot
SLOT_SECONDS = 600
#: how long the units of a provider without a daily limit may wait to be written
WRITE_BEHIND = 1.0
_DAY = 86400


class Counters(Protocol):
    """What the daily limit needs from the spool."""

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int: ...

    async def counter_get(self, name: str, window: str) -> int: ...

    async def counter_since(self, name: str, window: str) -> dict[str, int]: ...

    async def counter_prune(self, name: str, before: str) -> None: ...


class SharedCounters(Counters, Protocol):
    """Counters several nodes share: a limit is reserved in the store itself."""

    async def counter_reserve(
        self, name: str, window: str, oldest: str, want: int, limit: int
    ) -> int: ...

    async def counter_return(self, name: str, window: str, n: int) -> None: ...


def utc_window(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def next_utc_midnight(now: float) -> float:
    day = time.gmtime(now)
    return float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)) + _DAY)


def slot_start(now: float) -> float:
    return float(int(now // SLOT_SECONDS) * SLOT_SECONDS)


def slot_key(now: float) -> str:
    """The rolling-window slot holding ``now``; keys sort as the slots do."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(slot_start(now)))


def _slot_time(key: str) -> float:
    return float(calendar.timegm(time.strptime(key, "%Y-%m-%dT%H:%M")))


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
        got = self.reserve_many(1, max_wait)
        return None if got is None else got[0]

    def reserve_many(self, want: int, max_wait: float) -> tuple[float, int] | None:
        """Take up to ``want`` tokens: (seconds until usable, how many), or ``None``.

        The wait is for the first token; the caller gets as many as the bucket
        holds by then (at least one, at most ``want``).
        """
        self._refill()
        wait = max(0.0, (1.0 - self._tokens) / self.rate.per_second)
        if wait > max_wait:
            return None
        got = max(1, min(want, int(max(1.0, self._tokens + 1e-9))))
        self._tokens -= got
        return wait, got

    async def take(self, want: int, max_wait: float) -> tuple[float, int] | None:
        """``reserve_many``, awaitable as a bucket in the store is (``FleetBucket``)."""
        return self.reserve_many(want, max_wait)

    def refund(self, n: int = 1) -> None:
        self._tokens = min(self.capacity, self._tokens + n)

    def next_free(self) -> float:
        """Seconds until a token is available without waiting."""
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate.per_second)


@dataclass(frozen=True, slots=True)
class Grant:
    """Units taken from a quota: how many, and the counter window they went to."""

    n: int
    window: str


class Quota:
    """Messages or recipients sent through one provider in its window, durable with ``counters``."""

    def __init__(
        self,
        provider_id: str,
        counters: Counters | None,
        *,
        unit: Unit = "messages",
        window: Window = "utc_day",
        clock: Callable[[], float] = time.time,
        shared: SharedCounters | None = None,
    ) -> None:
        # The utc_day/messages name is the one earlier versions wrote: usage survives an upgrade.
        self.name = f"provider:{provider_id}:{unit}" + (":10m" if window == "rolling_24h" else "")
        self.unit: Unit = unit
        self.window: Window = window
        self._counters = counters
        #: the store several nodes share: limits are reserved there (module docstring)
        self._shared = shared
        self._clock = clock
        self._lock = asyncio.Lock()
        #: counter window -> units, for the windows that count now
        self._slots: dict[str, int] = {}
        self._loaded_for = ""  # utc_day: the date loaded; rolling: "" until loaded
        self._current = ""
        self._total = 0
        self._pruned = ""  # the slot whose start last pruned the spool
        #: counted in memory, not yet in the spool (no limit: see ``reserve``), by window
        self._unwritten: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None

    @property
    def rolling(self) -> bool:
        return self.window == "rolling_24h"

    def _key(self, now: float) -> str:
        return slot_key(now) if self.rolling else utc_window(now)

    def _oldest_counted(self, now: float) -> str:
        return slot_key(now - _DAY)

    async def _refresh(self, now: float) -> None:
        """Bring the cached slots up to ``now``: load once (or per day), drop what left."""
        key = self._key(now)
        if self._current == key:
            return
        async with self._lock:
            if self._current == key:
                return
            if not self.rolling:
                stored = 0
                if self._counters is not None:
                    stored = await self._counters.counter_get(self.name, key)
                self._slots = {key: stored}
            else:
                oldest = self._oldest_counted(now)
                if not self._loaded_for:
                    if self._counters is not None:
                        self._slots = await self._counters.counter_since(self.name, oldest)
                    self._loaded_for = oldest
                self._slots = {k: v for k, v in self._slots.items() if k >= oldest}
            self._total = sum(self._slots.values())
            self._current = key

    async def used(self) -> int:
        """Units counted in the window now (in a fleet: by every node)."""
        now = self._clock()
        await self._refresh(now)
        if self._shared is not None:
            await self._reload(now)
        return self._total

    async def _reload(self, now: float) -> None:
        """Read the window's counts again from the store (others wrote to it too)."""
        assert self._shared is not None
        if self.rolling:
            slots = await self._shared.counter_since(self.name, self._oldest_counted(now))
        else:
            key = self._key(now)
            slots = {key: await self._shared.counter_get(self.name, key)}
        slots = {k: v + self._unwritten.get(k, 0) for k, v in slots.items()}
        for k, v in self._unwritten.items():
            slots.setdefault(k, v)
        self._slots = slots
        self._total = sum(slots.values())

    def reopens_at(self, now: float) -> float:
        """When some units come back: the next UTC midnight, or the oldest slot leaving."""
        if not self.rolling:
            return next_utc_midnight(now)
        used = sorted(k for k, v in self._slots.items() if v > 0)
        if not used:
            return now
        return _slot_time(used[0]) + _DAY + SLOT_SECONDS

    async def reserve(self, want: int, limit: int | None) -> Grant:
        """Take up to ``want`` units (as many as fit under ``limit``; 0 when none do)."""
        now = self._clock()
        await self._refresh(now)
        key = self._current
        if self.rolling and self._counters is not None and self._pruned != key:
            # Once per slot, by the sender only (``used`` is read-only: the CLI calls it).
            self._pruned = key
            await self._counters.counter_prune(self.name, self._oldest_counted(now))
        if self._shared is not None and limit is not None:
            return await self._reserve_shared(now, key, want, limit)
        n = want if limit is None else max(0, min(want, limit - self._total))
        if n == 0:
            return Grant(0, key)
        # in memory first: concurrent callers see it before the commit
        self._slots[key] = self._slots.get(key, 0) + n
        self._total += n
        if self._counters is not None and limit is None:
            self._write_behind(key, n)  # a statistic: nothing waits for it
        elif self._counters is not None:
            try:
                await self.flush()
                await self._counters.counter_add(self.name, key, n)
            except BaseException:
                self._slots[key] -= n
                self._total -= n
                raise
        return Grant(n, key)

    async def _reserve_shared(self, now: float, key: str, want: int, limit: int) -> Grant:
        """``reserve`` in the store every node counts in: one transaction, never over."""
        assert self._shared is not None
        await self.flush()  # what was counted behind before the limit was set counts
        oldest = self._oldest_counted(now) if self.rolling else key
        n = await self._shared.counter_reserve(self.name, key, oldest, want, limit)
        self._slots[key] = self._slots.get(key, 0) + n
        self._total += n
        if n < want:
            await self._reload(now)  # the fleet's slots: when units come back
        return Grant(n, key)

    def _write_behind(self, window: str, n: int) -> None:
        self._unwritten[window] = self._unwritten.get(window, 0) + n
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_later(), name=f"quota-{self.name}"
            )

    async def _write_later(self) -> None:
        await asyncio.sleep(WRITE_BEHIND)
        self._writer = None  # units counted from now on start the next wait
        try:
            await self.flush()
        except SluiceError as exc:  # the spool cannot write: its health says so
            log.warning("could not count sent mail of %s: %s; trying again", self.name, exc)
            if self._unwritten and self._writer is None:
                self._writer = asyncio.get_running_loop().create_task(self._write_later())

    async def flush(self) -> None:
        """Write the units counted behind (``reserve`` without a limit), if any."""
        pending, self._unwritten = self._unwritten, {}
        if self._counters is None:
            return
        for i, (window, delta) in enumerate(pending.items()):
            if not delta:
                continue
            try:
                await self._counters.counter_add(self.name, window, delta)
            except BaseException:
                for w, d in list(pending.items())[i:]:  # this one and the rest: next time
                    self._unwritten[w] = self._unwritten.get(w, 0) + d
                raise

    async def aclose(self) -> None:
        """Write what is counted behind now (the daemon stops, or the provider goes)."""
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None
        await self.flush()

    async def give_back(self, grant: Grant, n: int | None = None) -> None:
        """Return ``n`` (default: all) of the units ``grant`` took; nothing was sent with them."""
        n = grant.n if n is None else min(n, grant.n)
        if n <= 0 or self._slots.get(grant.window, 0) < n:
            return  # its window left meanwhile; the current count never included it
        self._slots[grant.window] -= n
        self._total -= n
        if self._unwritten.get(grant.window, 0) >= n:
            self._unwritten[grant.window] -= n  # taken behind: given back behind
        elif self._shared is not None:
            await self._shared.counter_return(self.name, grant.window, n)  # under its lock
        elif self._counters is not None:
            await self._counters.counter_add(self.name, grant.window, -n)
