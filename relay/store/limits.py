"""Limits held in the store, so that every node sharing it keeps them together.

On a store that several nodes share (PostgreSQL, issue #27), a provider's
``daily_limit``, its ``rate`` and its circuit breaker must be counted where
all of them see it. Each job here is one transaction: ``limit_lock`` first
(on PostgreSQL an advisory lock on the limit's key, held to the commit; on
SQLite a no-op, the writer's ``BEGIN IMMEDIATE`` already admits one writer),
then a read and a write. So two nodes asking at once take turns, and the
second sees what the first took.

The lock is *tried*, never waited for: a job runs inside its node's group
commit, whose transaction may hold other limits' locks already, so two nodes
waiting for each other's would deadlock (PostgreSQL breaks that after a
second by failing a whole batch: tried with three nodes, a third of the
reservations failed so). A job that finds its limit taken raises
``LimitBusy``, its savepoint is rolled back, and ``Spool`` asks again a few
milliseconds later. Every write of a limit's rows is made under its lock
(``counter_return`` gives units back so), so a job holding it never waits for
a row either.

- ``counter_reserve``: take up to ``want`` units of a counter under a limit,
  over its windows from ``oldest`` on (a UTC day: one window; a rolling
  24 h: its 10-minute slots). Giving units back is ``counter_add`` with a
  negative delta, as before.
- ``rate_reserve``: a rate's token bucket as GCRA (the generic cell rate
  algorithm): one value per bucket, its *theoretical arrival time* (TAT),
  kept in ``meta``. Tokens held at ``now`` are ``capacity - (tat - now) *
  rate``; taking ``n`` moves the TAT ``n / rate`` later. The arithmetic is
  ``TokenBucket``'s, so a bucket behaves the same in memory and in the store.
- ``block_provider`` / ``provider_blocks``: a provider's circuit opened (or
  its own request to back off) on one node, for the others to skip it too;
  a later ``until`` replaces an earlier one, never the reverse.

No new table: the TAT and the blocks are ``meta`` rows (text), the daily
usage is the ``counters`` rows it always was. A node's clock matters for the
TAT (wall-clock seconds): nodes are expected to keep time (NTP); a skew of
*d* seconds lets at most *d* seconds' worth of the rate through early.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from relay.errors import SpoolError
from relay.store.db import Conn, Reader
from relay.store.sql import QUERIES

__all__ = [
    "BLOCK_PREFIX",
    "LimitBusy",
    "ProviderBlock",
    "RateGrant",
    "block_provider",
    "counter_reserve",
    "counter_return",
    "gcra",
    "provider_blocks",
    "rate_key",
    "rate_reserve",
]

#: the ``meta`` keys of the fleet's provider blocks: ``fleet.block.<provider id>``
BLOCK_PREFIX = "fleet.block."
#: the key just past every ``BLOCK_PREFIX`` key ("/" sorts right after ".")
_BLOCK_END = "fleet.block/"


class LimitBusy(SpoolError):
    """Another node's transaction holds this limit now: ask again shortly."""


def _lock(c: Conn, key: str) -> None:
    """Take the limit ``key`` to the end of the transaction, or raise ``LimitBusy``."""
    row = c.execute(QUERIES["limit_lock"], {"key": key}).fetchone()
    if row is None or not row[0]:
        raise LimitBusy(key)


def rate_key(name: str) -> str:
    """The ``meta`` key holding the TAT of the bucket ``name``."""
    return f"fleet.rate.{name}"


@dataclass(frozen=True, slots=True)
class RateGrant:
    """What a rate gave: ``got`` tokens (0: refused), usable in ``wait`` seconds.

    When refused, ``wait`` is how long the first token would have taken.
    """

    wait: float
    got: int


@dataclass(frozen=True, slots=True)
class ProviderBlock:
    """A provider skipped fleet-wide until ``until`` (wall clock), and why, and by whom."""

    until: float
    reason: str
    since: float
    node: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ProviderBlock | None:
        """The block in ``text``, or None for a damaged row."""
        try:
            data = json.loads(text)
            return cls(
                until=float(data["until"]),
                reason=str(data["reason"]),
                since=float(data["since"]),
                node=str(data["node"]),
            )
        except (ValueError, TypeError, KeyError):
            return None


def gcra(
    tat: float | None,
    now: float,
    per_second: float,
    capacity: float,
    want: int,
    max_wait: float,
) -> tuple[RateGrant, float]:
    """One reservation of a bucket whose TAT is ``tat``: (the grant, the new TAT).

    Same rule as ``relay.outbound.limits.TokenBucket.reserve_many``: the wait
    is for the first token; the caller gets as many as the bucket holds then
    (at least one, at most ``want``); over ``max_wait`` nothing is taken.
    """
    start = now if tat is None else max(tat, now)
    tokens = capacity - (start - now) * per_second
    wait = max(0.0, (1.0 - tokens) / per_second)
    if wait > max_wait:
        return RateGrant(wait, 0), start
    got = max(1, min(want, int(max(1.0, tokens + 1e-9))))
    return RateGrant(wait, got), start + got / per_second


def counter_reserve(c: Conn, name: str, window: str, oldest: str, want: int, limit: int) -> int:
    """Add up to ``want`` to ``name``'s ``window`` while its windows from ``oldest`` stay
    under ``limit``; how many were added (0 when none fit)."""
    _lock(c, f"counter:{name}")
    (used,) = c.execute(QUERIES["counter_sum"], {"name": name, "window": oldest}).fetchone()
    n = max(0, min(want, limit - int(used)))
    if n:
        c.execute(QUERIES["counter_add"], {"name": name, "window": window, "delta": n})
    return n


def counter_return(c: Conn, name: str, window: str, n: int) -> None:
    """Give back ``n`` units ``counter_reserve`` took (under the same lock)."""
    _lock(c, f"counter:{name}")
    c.execute(QUERIES["counter_add"], {"name": name, "window": window, "delta": -n})


def rate_reserve(
    c: Conn,
    name: str,
    now: float,
    per_second: float,
    capacity: float,
    want: int,
    max_wait: float,
) -> RateGrant:
    """Take up to ``want`` tokens of the stored bucket ``name`` (``gcra``)."""
    key = rate_key(name)
    _lock(c, key)
    row = c.execute(QUERIES["meta_get"], {"key": key}).fetchone()
    tat: float | None = None
    if row is not None:
        try:
            tat = float(row[0])
        except ValueError:
            tat = None  # a damaged value: start full, as a new bucket does
    grant, new_tat = gcra(tat, now, per_second, capacity, want, max_wait)
    if grant.got:
        c.execute(QUERIES["meta_set"], {"key": key, "value": repr(new_tat)})
    return grant


def block_provider(c: Conn, provider: str, block: ProviderBlock) -> bool:
    """Record ``block`` unless one ending later is recorded; whether it was."""
    key = BLOCK_PREFIX + provider
    _lock(c, key)
    row = c.execute(QUERIES["meta_get"], {"key": key}).fetchone()
    if row is not None:
        held = ProviderBlock.from_json(str(row[0]))
        if held is not None and held.until >= block.until:
            return False
    c.execute(QUERIES["meta_set"], {"key": key, "value": block.to_json()})
    return True


async def provider_blocks(reader: Reader, now: float) -> dict[str, ProviderBlock]:
    """The blocks in force at ``now``, by provider id."""
    found: dict[str, ProviderBlock] = {}
    rows = await reader.execute_fetchall(
        QUERIES["meta_range"], {"lo": BLOCK_PREFIX, "hi": _BLOCK_END}
    )
    for row in rows:
        block = ProviderBlock.from_json(str(row[1]))
        if block is not None and block.until > now:
            found[str(row[0])[len(BLOCK_PREFIX) :]] = block
    return found
