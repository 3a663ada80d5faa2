"""Outcomes a provider gave that the spool could not record yet (a full disk after a 250).

Why this exists: a claimed recipient stays ``sending`` in the spool until its
outcome is written. If the scheduler dropped an outcome that failed to write
(as it once did, with a traceback), the lease ran out, the lease sweep queued
the recipient again, and a message the provider had already taken went out a
second time: 14 duplicates in one disk-full episode (issue #23 point 4).

So an outcome that cannot be written is kept here, in the scheduler's memory,
and written again with back-off (``relay.backoff``) until it goes in, while
the recipients it covers are left out of the lease sweep
(``Spool.requeue_expired_leases(keep=...)``): while this process runs, no
recipient whose 250 it has seen is claimed, or sent, again.

A crash (or a stop) in that window loses the memory: the rows are still
``sending``, the next start queues them again (``Spool.requeue_inflight``) and
they go out once more. That is the rule that already holds for every delivery
in flight at a crash: at most those are repeated, never mail that was
recorded.

Bounded: the scheduler claims no new mail while ``full`` (each delivery could
add one more entry), so at most ``limit`` plus the deliveries in flight
(``delivery.max_concurrent``) are held. An entry holds no message body; the
outcome hook re-reads it from the spool once the outcome is written. The
structure is pure (no I/O): the scheduler does the writing and the logging.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from relay.backoff import exponential
from relay.events import OutboxEvent
from relay.model import Claim, Outcome
from relay.store.spool import Finish

__all__ = ["PendingOutcomes", "Refusal", "Unrecorded"]

#: more messages than this with outcomes unwritten: no more mail is claimed
DEFAULT_LIMIT = 1000
#: the first retry of a failed write, and the longest wait between two (seconds)
RETRY_FIRST = 0.5
RETRY_CAP = 10.0
#: relative spread of those waits, so that many outcomes do not retry as one burst
RETRY_JITTER = 0.2


@dataclass(frozen=True, slots=True)
class Refusal:
    """A recipient the provider refused outright: counted as a hard bounce once recorded."""

    recipient_id: int
    outcome: Outcome
    provider: str | None


@dataclass(slots=True)
class Unrecorded:
    """One attempt's outcomes, decided and logged, that the spool has not taken yet."""

    #: the claim, without its body
    claim: Claim
    finishes: tuple[Finish, ...]
    events: tuple[OutboxEvent, ...]
    refusals: tuple[Refusal, ...]
    #: monotonic time of the first failed write
    since: float
    #: the last write's error
    error: str
    failures: int = 1
    #: monotonic time of the next write
    retry_at: float = 0.0


class PendingOutcomes:
    """The scheduler's unwritten outcomes, each with its next write time.

    Owned by one ``Scheduler`` (never shared): ``keep`` what failed to
    write, write ``due`` ones again, then ``recorded`` or ``failed_again``.
    """

    def __init__(
        self,
        *,
        limit: int = DEFAULT_LIMIT,
        first: float = RETRY_FIRST,
        cap: float = RETRY_CAP,
        rng: random.Random | None = None,
    ) -> None:
        self._limit = limit
        self._first = first
        self._cap = cap
        self._rng = rng or random.Random()
        self._items: list[Unrecorded] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Unrecorded]:
        """Every held entry, oldest first (a copy: entries may be removed meanwhile)."""
        return iter(list(self._items))

    @property
    def full(self) -> bool:
        """At or past the bound: claim no more mail until some are written."""
        return len(self._items) >= self._limit

    def keep(
        self,
        claim: Claim,
        finishes: Sequence[Finish],
        events: Sequence[OutboxEvent],
        refusals: Sequence[Refusal],
        *,
        error: str,
        now: float,
    ) -> Unrecorded:
        """Hold an attempt's outcomes whose first write failed at ``now`` (monotonic)."""
        item = Unrecorded(
            claim=replace(claim, data=None),
            finishes=tuple(finishes),
            events=tuple(events),
            refusals=tuple(refusals),
            since=now,
            error=error,
        )
        item.retry_at = now + self._delay(1)
        self._items.append(item)
        return item

    def due(self, now: float) -> list[Unrecorded]:
        """Those whose next write is due, oldest first."""
        return [i for i in self._items if i.retry_at <= now]

    def failed_again(self, item: Unrecorded, error: str, *, now: float) -> None:
        """Another write failed: wait longer before the next."""
        item.failures += 1
        item.error = error
        item.retry_at = now + self._delay(item.failures)

    def recorded(self, item: Unrecorded) -> None:
        """Written at last: forget it (its recipients may be swept again)."""
        self._items.remove(item)

    def recipient_ids(self) -> frozenset[int]:
        """Every recipient with an outcome held here: the lease sweep leaves them alone."""
        return frozenset(f.recipient_id for i in self._items for f in i.finishes)

    def next_in(self, now: float) -> float | None:
        """Seconds until the next write is due (0 if one is), None with nothing held."""
        if not self._items:
            return None
        return max(0.0, min(i.retry_at for i in self._items) - now)

    def _delay(self, n: int) -> float:
        return exponential(n, first=self._first, cap=self._cap, jitter=RETRY_JITTER, rng=self._rng)
