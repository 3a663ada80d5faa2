"""Bounces and the suppression list: the store side of "stop mailing addresses that bounce".

A bounce is recorded with its kind (hard or soft), its status and diagnostic,
and where it came from (a provider's refusal at SMTP time, or a DSN read from
the bounce mailbox). Recording one checks the threshold in the same
transaction: ``threshold`` hard bounces of one address (within ``window``, if
set) put the address on the suppression list with the last diagnostic as the
reason. Repeated soft bounces may count as a hard one
(``soft_as_hard_after``: soft bounces spread over at least that long).

A suppression entry is global (scope ``''``) or scoped to one stream (the
relay's counterpart of a newsletter campaign, named by a header such as
``X-Sluice-Stream`` or ``List-Id``), has a source (bounce, manual, import,
api), a reason, and an optional expiry. Addresses are compared lower-cased.
Bounces suppress globally, or (``bounces.suppress_scope: stream``) only for
the stream of the mail that bounced, counted per stream: the message's
stream as the listener kept it, found through the recipient the bounce names.

A bounce read from the bounce mailbox (``record_dsn``) counts only when it is
about mail Sluice sent to that address: a verified VERP token naming a
recipient row of that address, or a queue ID (Sluice's ``Received:`` line in
the returned header) naming a message delivered through a provider to it.
Anyone can write a well-formed DSN to the bounce address, which is the
return path of every relayed message; what names no such mail is kept as an
*unmatched* bounce (who sent it, the address it claims, why it did not
match; the latest ``UNMATCHED_KEPT``), shown and never counted.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from relay.config import BounceSettings, SuppressScope
from relay.events import Endpoint, OutboxEvent, bounce_events
from relay.model import Suppression, suppressed_for
from relay.secrets import Redactor
from relay.store.db import Conn, Jobs, Reader
from relay.store.outbox import insert_events
from relay.store.sql import QUERIES, like_escape

__all__ = [
    "SOURCES",
    "UNMATCHED_KEPT",
    "BounceRecord",
    "DsnOutcome",
    "NewBounce",
    "Suppressions",
    "Threshold",
    "UnmatchedBounce",
    "normalize",
]

#: where a suppression entry came from
SOURCES = ("bounce", "manual", "import", "api")

#: a stored bounce message is cut to this size (the DSN itself is small; the
#: returned original is not needed whole to see why it bounced)
_RAW_MAX = 256 * 1024

#: unmatched bounces kept (the latest): enough to see a pattern, bounded
#: whatever a forger sends
UNMATCHED_KEPT = 1000


def normalize(address: str) -> str:
    """The form addresses are stored and compared in."""
    return address.strip().strip("<>").lower()


@dataclass(frozen=True, slots=True)
class NewBounce:
    address: str
    kind: Literal["hard", "soft"]
    source: Literal["smtp", "dsn"]
    status: str = ""
    diagnostic: str = ""
    queue_id: str | None = None
    #: the recipient row the bounce answers (a VERP token names it)
    recipient_id: int | None = None
    stream: str = ""
    #: what identifies this bounce (its Message-ID and address): recorded once
    key: str | None = None
    raw: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class BounceRecord:
    id: int
    address: str
    kind: str
    status: str
    diagnostic: str
    source: str
    queue_id: str | None
    stream: str
    received_at: float

    @classmethod
    def from_row(cls, row: Any) -> BounceRecord:
        return cls(
            id=row["id"],
            address=row["address"],
            kind=row["kind"],
            status=row["status"],
            diagnostic=row["diagnostic"],
            source=row["source"],
            queue_id=row["queue_id"],
            stream=row["stream"],
            received_at=row["received_at"],
        )


@dataclass(frozen=True, slots=True)
class UnmatchedBounce:
    """A bounce that named no mail Sluice sent to the address it claims: kept, never counted."""

    id: int
    received_at: float
    #: the bounce's From (who claims to report it)
    sender: str
    #: the address it says failed
    address: str
    queue_id: str | None
    #: why it did not match
    reason: str

    @classmethod
    def from_row(cls, row: Any) -> UnmatchedBounce:
        return cls(
            id=row["id"],
            received_at=row["received_at"],
            sender=row["sender"],
            address=row["address"],
            queue_id=row["queue_id"],
            reason=row["reason"],
        )


@dataclass(frozen=True, slots=True)
class DsnOutcome:
    """What ``record_dsn`` made of a bounce: counted (maybe suppressing), or unmatched and why."""

    matched: bool
    #: the suppression it caused (matched bounces only)
    entry: Suppression | None = None
    #: why it was not matched ('' when matched)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Threshold:
    """When bounces make an address suppressed (``bounces:`` in the config)."""

    #: hard bounces that suppress an address
    hard: int = 3
    #: only bounces this recent count (seconds; None: all of them)
    window: float | None = None
    #: soft bounces spread over at least this long count as one hard (None: off)
    soft_as_hard_after: float | None = None
    #: a suppression from bounces lifts itself after this long (None: never)
    expire_after: float | None = None
    #: what the suppression covers: every stream, or the stream of the mail that bounced
    scope: SuppressScope = SuppressScope.GLOBAL

    @classmethod
    def of(cls, b: BounceSettings) -> Threshold:
        """The rule ``bounces:`` in the config sets."""
        return cls(b.threshold, b.window, b.soft_as_hard_after, b.expire_after, b.suppress_scope)


class Suppressions:
    """Bounces and suppression entries, through the spool's writer and reader."""

    def __init__(
        self,
        writer: Jobs,
        reader: Reader,
        clock: Callable[[], float],
        *,
        outbox_wake: asyncio.Event | None = None,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._clock = clock
        #: set when webhook events are stored (``Spool.outbox_wake``)
        self._outbox_wake = outbox_wake
        #: masks secrets in a bounce's diagnostic and raw message (``Spool.redact`` sets it)
        self.redact = Redactor()
        #: the VERP key once read (``verp_key``): it never changes
        self._verp_key: bytes | None = None

    # ------------------------------------------------------------------ writes

    async def record_bounce(
        self,
        bounce: NewBounce,
        threshold: Threshold,
        *,
        endpoints: Sequence[Endpoint] = (),
    ) -> Suppression | None:
        """Store a bounce; the suppression it caused, if it crossed the threshold.

        ``endpoints`` (``notify.webhooks``, passed by the caller) get a
        ``bounced`` event, and a ``suppressed`` one (``source: bounce``) when
        the threshold was crossed, stored in the same transaction as the
        bounce. A bounce recorded before (same ``key``) is not reported again.
        """
        now = self._clock()
        bounce = self._redacted(bounce)

        def job(c: Conn) -> tuple[Suppression | None, bool]:
            done = _record_bounce(c, bounce, threshold, now)
            if done is None:
                return None, False
            events = _events(endpoints, bounce, done, now)
            insert_events(c, events)
            return done.entry, bool(events)

        entry, evented = await self._writer.submit(job)
        if evented and self._outbox_wake is not None:
            self._outbox_wake.set()
        return entry

    def _redacted(self, bounce: NewBounce) -> NewBounce:
        """``bounce`` with its diagnostic and raw message through ``redact``.

        Both are a provider's text (a refusal, a DSN) that may echo what
        Sluice sent it; they are kept, shown and posted in events.
        """
        diagnostic = self.redact(bounce.diagnostic)
        raw = bounce.raw
        if raw is not None:
            text = raw.decode("utf-8", "surrogateescape")
            masked = self.redact(text)
            raw = raw if masked == text else masked.encode("utf-8", "surrogateescape")
        if diagnostic == bounce.diagnostic and raw is bounce.raw:
            return bounce
        return replace(bounce, diagnostic=diagnostic, raw=raw)

    async def record_dsn(
        self,
        bounce: NewBounce,
        threshold: Threshold,
        *,
        sender: str = "",
        problem: str = "",
        endpoints: Sequence[Endpoint] = (),
    ) -> DsnOutcome:
        """Record a bounce from the mailbox if it is about mail Sluice sent; else keep it apart.

        ``bounce.recipient_id`` is set only from a VERP token that verified;
        ``bounce.queue_id`` alone comes from the returned ``Received:`` line.
        ``problem`` (a token that did not verify) makes it unmatched at once.
        A matched bounce is recorded as ``record_bounce`` does, in the same
        transaction as the check; an unmatched one is kept in
        ``unmatched_bounces`` (no event, no count).
        """
        now = self._clock()
        bounce = self._redacted(bounce)
        sender = self.redact(sender)

        def job(c: Conn) -> tuple[DsnOutcome, bool]:
            reason = problem or _why_unmatched(c, bounce)
            if reason:
                c.execute(
                    QUERIES["unmatched_insert"],
                    {
                        "now": now,
                        "sender": sender[:500],
                        "address": normalize(bounce.address)[:500],
                        "queue_id": bounce.queue_id,
                        "reason": reason[:500],
                        "key": bounce.key,
                    },
                )
                c.execute(QUERIES["unmatched_prune"], {"keep": UNMATCHED_KEPT})
                return DsnOutcome(matched=False, reason=reason), False
            done = _record_bounce(c, bounce, threshold, now)
            if done is None:
                return DsnOutcome(matched=True), False
            events = _events(endpoints, bounce, done, now)
            insert_events(c, events)
            return DsnOutcome(matched=True, entry=done.entry), bool(events)

        outcome, evented = await self._writer.submit(job)
        if evented and self._outbox_wake is not None:
            self._outbox_wake.set()
        return outcome

    async def verp_key(self) -> bytes:
        """The secret VERP tokens are signed with (``relay.verp``): made at first use, kept.

        It lives in the spool (``spool_keys``), so every process that sends
        or reads bounces for this spool (the daemon, ``sluice bounces poll``)
        agrees on it, and it survives restarts and upgrades. Never logged.
        """
        if self._verp_key is None:
            # Read first: once made, no process needs the writer for it (a spool
            # that cannot be written, a full disk, still signs and checks tokens).
            async with self._reader.execute(QUERIES["spool_key_get"], {"name": "verp"}) as cur:
                row = await cur.fetchone()
            if row is not None:
                self._verp_key = bytes(row[0])
                return self._verp_key
            fresh = secrets.token_bytes(32)
            now = self._clock()

            def job(c: Conn) -> bytes:
                c.execute(QUERIES["spool_key_make"], {"name": "verp", "secret": fresh, "now": now})
                return bytes(c.execute(QUERIES["spool_key_get"], {"name": "verp"}).fetchone()[0])

            self._verp_key = await self._writer.submit(job)
        return self._verp_key

    async def add(
        self,
        address: str,
        *,
        scope: str = "",
        source: str = "manual",
        reason: str = "",
        expires_at: float | None = None,
    ) -> Suppression:
        """Add (or replace) one entry."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}")
        now = self._clock()
        entry = Suppression(normalize(address), scope, source, reason, now, expires_at)
        await self._writer.submit(
            lambda c: c.execute(QUERIES["suppression_upsert"], _params(entry, now))
        )
        return entry

    async def add_many(self, entries: Iterable[Suppression]) -> int:
        """Add entries in one transaction (an import); the count added."""
        now = self._clock()
        rows = [_params(e, now, keep_created=True) for e in entries]
        await self._writer.submit(lambda c: c.executemany(QUERIES["suppression_upsert"], rows))
        return len(rows)

    async def remove(self, address: str, *, scope: str | None = None) -> int:
        """Remove an address's entry in ``scope`` (every scope when None); how many went."""

        def job(c: Conn) -> int:
            if scope is None:
                cur = c.execute(
                    QUERIES["suppression_delete_all_scopes"], {"address": normalize(address)}
                )
            else:
                cur = c.execute(
                    QUERIES["suppression_delete"],
                    {"address": normalize(address), "scope": scope},
                )
            return cur.rowcount

        return await self._writer.submit(job)

    # ------------------------------------------------------------------- reads

    async def active(self, address: str, stream: str = "") -> Suppression | None:
        """The entry that keeps mail of ``stream`` from ``address`` now, if any."""
        return (await self.active_many([address], stream)).get(normalize(address))

    async def active_many(
        self, addresses: Iterable[str], stream: str = ""
    ) -> dict[str, Suppression]:
        """The entries that keep mail of ``stream`` from any of ``addresses`` now, by address."""
        wanted = sorted({normalize(a) for a in addresses})
        if not wanted:
            return {}
        # One hop to the reader thread, not three (execute, fetch, close).
        rows = await self._reader.execute_fetchall(
            QUERIES["suppressions_in_force"],
            {"addresses": json.dumps(wanted), "now": self._clock()},
        )
        return suppressed_for(map(Suppression.from_row, rows), stream)

    async def page(
        self,
        *,
        search: str | None = None,
        scope: str | None = None,
        source: str | None = None,
        after: str | None = None,
        after_scope: str | None = None,
        limit: int = 100,
    ) -> list[Suppression]:
        """One page of entries in (address, scope) order; keyset pagination.

        Pass the last entry's ``address`` and ``scope`` as ``after`` and
        ``after_scope`` for the next page (``after`` alone skips the rest of
        that address).
        """
        params = {
            "q": "%" + like_escape(search.lower()) + "%" if search else None,
            "scope": scope,
            "source": source,
            "after": after,
            "after_scope": after_scope if after_scope is not None else "\uffff",
            "limit": limit,
        }
        async with self._reader.execute(QUERIES["suppressions_page"], params) as cur:
            return [Suppression.from_row(r) async for r in cur]

    async def entries_of(self, address: str) -> list[Suppression]:
        """Every entry of one address (each scope), expired ones too."""
        async with self._reader.execute(
            QUERIES["suppressions_of"], {"address": normalize(address)}
        ) as cur:
            return [Suppression.from_row(r) async for r in cur]

    async def scopes(self, *, limit: int = 200) -> list[str]:
        """The scopes in use, in order ('' first: global)."""
        async with self._reader.execute(QUERIES["suppression_scopes"], {"limit": limit}) as cur:
            return [str(r["scope"]) async for r in cur]

    async def count_by_source(self) -> dict[str, int]:
        """Entries in force now, by source (every source listed, 0 when none)."""
        counts = dict.fromkeys(SOURCES, 0)
        async with self._reader.execute(
            QUERIES["suppressions_count_by_source"], {"now": self._clock()}
        ) as cur:
            async for row in cur:
                counts[row["source"]] = int(row["n"])
        return counts

    async def bounces_of(self, address: str, *, limit: int = 100) -> list[BounceRecord]:
        """The bounces recorded for an address, newest first."""
        async with self._reader.execute(
            QUERIES["bounces_of"], {"address": normalize(address), "limit": limit}
        ) as cur:
            return [BounceRecord.from_row(r) async for r in cur]

    async def unmatched(self, *, limit: int = 5) -> list[UnmatchedBounce]:
        """The latest unmatched bounces, newest first."""
        async with self._reader.execute(QUERIES["unmatched_latest"], {"limit": limit}) as cur:
            return [UnmatchedBounce.from_row(r) async for r in cur]

    async def unmatched_count(self) -> int:
        """How many unmatched bounces are kept (at most ``UNMATCHED_KEPT``)."""
        async with self._reader.execute(QUERIES["unmatched_count"]) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row is not None else 0

    async def bounce_raw(self, bounce_id: int) -> bytes | None:
        """The stored bounce message (cut to 256 KiB), to view it."""
        async with self._reader.execute(QUERIES["bounce_raw"], {"id": bounce_id}) as cur:
            row = await cur.fetchone()
        return bytes(row["raw"]) if row is not None and row["raw"] is not None else None


@dataclass(frozen=True, slots=True)
class _Recorded:
    """A bounce just stored: its row, the address and message it names, what it caused."""

    bounce_id: int
    address: str
    queue_id: str
    entry: Suppression | None


def _events(
    endpoints: Sequence[Endpoint], bounce: NewBounce, done: _Recorded, now: float
) -> list[OutboxEvent]:
    """The webhook events of a bounce just recorded (``bounced``, and ``suppressed`` if it did)."""
    return bounce_events(
        endpoints,
        bounce_id=done.bounce_id,
        queue_id=done.queue_id,
        recipient=done.address,
        kind=bounce.kind,
        status=bounce.status,
        diagnostic=bounce.diagnostic[:1000],
        source=bounce.source,
        now=now,
        suppressed=done.entry.reason if done.entry is not None else None,
        suppressed_until=done.entry.expires_at if done.entry is not None else None,
        suppressed_scope=done.entry.scope if done.entry is not None else "",
    )


def _why_unmatched(c: Conn, bounce: NewBounce) -> str:
    """Why a bounce from the mailbox is not about mail Sluice sent to its address ('' if it is)."""
    address = normalize(bounce.address)
    if bounce.queue_id is None:
        return "no VERP token and no queue ID of Sluice's in the returned header"
    if bounce.recipient_id is not None:
        row = c.execute(
            QUERIES["bounce_verp_recipient"],
            {"queue_id": bounce.queue_id, "recipient_id": bounce.recipient_id},
        ).fetchone()
        if row is None:
            return f"the VERP token names no recipient in the spool ({bounce.queue_id})"
        if normalize(row["rcpt"]) != address:
            return f"the VERP token is for another recipient of {bounce.queue_id}"
        return ""
    row = c.execute(
        QUERIES["bounce_delivered_recipient"], {"queue_id": bounce.queue_id, "address": address}
    ).fetchone()
    if row is not None:
        return ""
    if c.execute(QUERIES["message_exists"], {"queue_id": bounce.queue_id}).fetchone() is None:
        return f"queue ID {bounce.queue_id} names no message in the spool"
    return f"{bounce.queue_id} was not delivered to this address through a provider"


def _record_bounce(
    c: Conn, bounce: NewBounce, threshold: Threshold, now: float
) -> _Recorded | None:
    """In the writer's transaction: store a bounce and apply the threshold (None: seen before)."""
    address = normalize(bounce.address)
    queue_id = bounce.queue_id or ""
    stream = bounce.stream
    target = None
    if bounce.queue_id is not None:
        target = c.execute(
            QUERIES["bounce_recipient"],
            {
                "queue_id": bounce.queue_id,
                "recipient_id": bounce.recipient_id,
                "address": address,
            },
        ).fetchone()
        if target is not None:
            address = normalize(target["rcpt"])  # VERP names it exactly
            queue_id = target["queue_id"]
            stream = target["stream"]  # as the listener kept it (relay.message.stream_of)
    inserted = c.execute(
        QUERIES["bounce_insert"],
        {
            "key": bounce.key,
            "address": address,
            "kind": bounce.kind,
            "status": bounce.status,
            "diagnostic": bounce.diagnostic[:1000],
            "source": bounce.source,
            "queue_id": bounce.queue_id,
            "stream": stream,
            "now": now,
            "raw": bounce.raw[:_RAW_MAX] if bounce.raw is not None else None,
        },
    )
    if inserted.rowcount == 0:
        return None  # read before (a poll that died before marking it)
    assert inserted.lastrowid is not None
    recorded = _Recorded(inserted.lastrowid, address, queue_id, None)
    if target is not None and bounce.source == "dsn":
        what = " ".join(p for p in (bounce.status, bounce.diagnostic) if p)
        c.execute(
            QUERIES["bounce_log"],
            {
                "recipient_id": target["id"],
                "message_id": target["message_id"],
                "queue_id": target["queue_id"],
                "rcpt": target["rcpt"],
                "subject": target["subject"],
                "now": now,
                "code": _code(bounce.status),
                "reply": f"{bounce.kind} bounce: {what or 'no details'}"[:1000],
            },
        )
    # Per stream, the bounces of one stream count towards its own threshold
    # and suppress for it alone; mail of no stream (a password reset) still
    # suppresses everywhere, as it always did.
    per_stream = threshold.scope is SuppressScope.STREAM
    scope = stream if per_stream else ""
    counted = {"address": address, "since": 0.0, "stream": stream if per_stream else None}
    if threshold.window is not None:
        counted["since"] = now - threshold.window
    count = int(c.execute(QUERIES["bounce_count_hard"], counted).fetchone()[0])
    if bounce.kind == "soft" and threshold.soft_as_hard_after is not None:
        span = c.execute(QUERIES["bounce_soft_span"], counted).fetchone()
        if span["n"] >= 2 and span["last"] - span["first"] >= threshold.soft_as_hard_after:
            count += 1
    if count < threshold.hard:
        return recorded
    covered = {"address": address, "scope": scope, "now": now}
    if c.execute(QUERIES["suppressed_in_scope"], covered).fetchone():
        return recorded  # already suppressed there (or everywhere)
    what = " ".join(p for p in (bounce.status, bounce.diagnostic) if p) or bounce.kind
    entry = Suppression(
        address=address,
        scope=scope,
        source="bounce",
        reason=f"{count} bounces; last: {what}"[:500],
        created_at=now,
        expires_at=now + threshold.expire_after if threshold.expire_after is not None else None,
    )
    c.execute(QUERIES["suppression_upsert"], _params(entry, now))
    return replace(recorded, entry=entry)


def _code(status: str) -> int | None:
    """A reply-code-like number for the log from an enhanced status (5.1.1 -> 550)."""
    return {"5": 550, "4": 450}.get(status[:1])


def _params(entry: Suppression, now: float, *, keep_created: bool = False) -> dict[str, Any]:
    return {
        "address": entry.address,
        "scope": entry.scope,
        "source": entry.source,
        "reason": entry.reason,
        "now": entry.created_at if keep_created and entry.created_at else now,
        "expires_at": entry.expires_at,
    }
