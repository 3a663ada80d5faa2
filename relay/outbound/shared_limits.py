"""A provider's limits and circuit breaker held with the other nodes of a fleet.

On a store several nodes share (``spool.shared``: PostgreSQL), what one node
keeps in memory would let the fleet overshoot a provider's account: each
node would send its own ``daily_limit`` and its own ``rate``, and keep
trying a provider that another node just found failing. So there:

- the daily limit is reserved in the store (``Quota`` with ``shared``:
  ``counter_reserve``, one transaction under a lock), not in memory;
- the rate is a bucket in the store (``FleetBucket``: ``rate_reserve``,
  GCRA), and its answer is ``TokenBucket``'s: the wait, how many;
- the circuit breaker's *skip* converges: a node that opens it (or that the
  provider asks to back off) records a block with its end (``Fleet.block``),
  and every node reads the blocks at most once per ``SYNC_EVERY`` seconds
  when it is about to use a provider, taking one that ends later than its own
  (``Health.adopt``). Converging rather than shared per attempt: a read of the
  store before every attempt would cost a round trip per delivery for news
  that changes a few times a day, and an attempt or two in flight on the
  other nodes while they learn it is what a provider failing sees anyway.

On SQLite (one node) none of this runs: the in-memory paths of
``relay.outbound.limits`` and ``relay.outbound.health`` are as they were.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from relay.config import Rate
from relay.errors import SluiceError
from relay.outbound.limits import SharedCounters
from relay.store.spool import ProviderBlock, RateGrant

__all__ = ["SYNC_EVERY", "Fleet", "FleetBucket", "FleetStore"]

log = logging.getLogger("sluice.providers")

#: how stale a node's view of the fleet's provider blocks may be, in seconds
SYNC_EVERY = 1.0


class FleetStore(SharedCounters, Protocol):
    """What the shared limits need from the store (``Spool`` on a shared backend)."""

    async def rate_reserve(
        self, name: str, *, per_second: float, capacity: float, want: int, max_wait: float
    ) -> RateGrant: ...

    async def block_provider(self, provider: str, block: ProviderBlock) -> bool: ...

    async def provider_blocks(self) -> dict[str, ProviderBlock]: ...


class Fleet:
    """One per daemon: the shared store, this node's name, the blocks it read last."""

    def __init__(
        self, store: FleetStore, node: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.node = node
        self._clock = clock
        self._blocks: dict[str, ProviderBlock] = {}
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def blocks(self) -> dict[str, ProviderBlock]:
        """The fleet's provider blocks, read again when older than ``SYNC_EVERY``.

        A store that cannot be read keeps the last answer (and says so once
        per read attempt): the blocks end by themselves.
        """
        if self._read_at is not None and self._clock() - self._read_at < SYNC_EVERY:
            return self._blocks
        async with self._lock:
            if self._read_at is not None and self._clock() - self._read_at < SYNC_EVERY:
                return self._blocks
            try:
                self._blocks = await self.store.provider_blocks()
            except SluiceError as exc:
                log.warning("could not read the fleet's provider blocks: %s", exc)
            self._read_at = self._clock()
            return self._blocks

    async def block(self, provider: str, until: float, reason: str, since: float) -> None:
        """Tell the other nodes to skip ``provider`` until ``until`` (wall clock)."""
        try:
            await self.store.block_provider(
                provider, ProviderBlock(until, reason, since, self.node)
            )
        except SluiceError as exc:  # a failed write must not fail the delivery
            log.warning("provider %s: could not tell the fleet to skip it: %s", provider, exc)


class FleetBucket:
    """``rate`` of one provider as a bucket in the shared store (``TokenBucket``'s rule)."""

    def __init__(self, rate: Rate, name: str, store: FleetStore) -> None:
        self.rate = rate
        self.capacity = max(1.0, min(float(rate.count), rate.per_second))
        self.name = name
        self._store = store
        self._next_free = 0.0

    async def take(self, want: int, max_wait: float) -> tuple[float, int] | None:
        """Up to ``want`` tokens: (seconds until usable, how many); ``None`` past ``max_wait``."""
        grant = await self._store.rate_reserve(
            self.name,
            per_second=self.rate.per_second,
            capacity=self.capacity,
            want=want,
            max_wait=max_wait,
        )
        if grant.got == 0:
            self._next_free = grant.wait
            return None
        self._next_free = 0.0
        return grant.wait, grant.got

    def next_free(self) -> float:
        """Seconds until a token is free, as the last refusal found it."""
        return self._next_free
