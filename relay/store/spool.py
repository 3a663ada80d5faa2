"""The spool: the only module that writes SQL, and the one store every part shares.

Writes go through one writer connection owned by one thread (``Writer`` in
``relay/store/writer.py``), with **group commit**: jobs queued while a
transaction is being written are batched into the next one, each inside its
own SAVEPOINT, so a failing job rolls back alone. Every caller is answered
only after the ``COMMIT`` of its own job has returned, and the database runs
WAL with ``synchronous=FULL``, so a ``250`` given after ``enqueue`` returns
survives ``kill -9`` and power loss alike. (aiosqlite gives one thread per
connection too, but one hop per statement; a batch here costs one hop.)

Reads go through a separate aiosqlite connection, so the admin page and the CLI
never hold the writer, and never see an uncommitted row.

Every state change is a guarded ``UPDATE ... WHERE status = ? RETURNING``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiosqlite

from relay.errors import SpoolError, UnknownMessage
from relay.events import Affected, Endpoint, EventType, OutboxEvent, control_events
from relay.message import HeaderBlock
from relay.model import (
    AttemptStatus,
    AuditEntry,
    Claim,
    ClaimedRecipient,
    LogEntry,
    MessageDetail,
    ProviderPause,
    QueueEntry,
    RecipientStatus,
    Selection,
    Suppression,
)
from relay.store.outbox import insert_events
from relay.store.sql import QUERIES, SCHEMA, like_escape
from relay.store.suppressions import Suppressions, normalize
from relay.store.writer import (
    Checkpointer,
    CheckpointHealth,
    WriteHealth,
    Writer,
    connect,
    write_lock_path,
)

__all__ = [
    "ALL_PROVIDERS",
    "STREAM_HEADER",
    "AttemptBucket",
    "Claimed",
    "Control",
    "DsnVerdict",
    "Finish",
    "NewMessage",
    "OAuthGrant",
    "OutboxEvent",
    "OutboxRow",
    "Selected",
    "Spool",
    "SpoolHealth",
    "new_queue_id",
    "read_meta",
]

log = logging.getLogger("sluice.spool")


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claiming transaction leased, and the operator pauses in force then."""

    claims: list[Claim]
    #: provider id (``ALL_PROVIDERS``: all) -> its pause
    pauses: dict[str, ProviderPause]


Clock = Callable[[], float]

_SCHEMA_VERSION = "3"
#: Columns added since version 1, as (table, column, definition): a spool made
#: before them gets them when opened, with a default that means "not known".
_ADDED_COLUMNS = (
    ("bodies", "crlf_only", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "stream", "TEXT NOT NULL DEFAULT ''"),
    ("recipients", "held_at", "REAL"),
    ("recipients", "released_at", "REAL"),
    ("recipients", "route_override", "TEXT"),
)

#: the header that names a message's stream (an app's own label for filters)
STREAM_HEADER = "X-Sluice-Stream"
#: the provider id of a pause of every provider
ALL_PROVIDERS = "*"

#: the webhook event each operator action makes (a reroute makes none: the
#: attempt it leads to reports itself)
_CONTROL_EVENT = {"hold": EventType.HELD, "release": EventType.RELEASED}

#: the states each operator action applies to (a hold takes only what waits)
_ALLOWED = {
    "hold": (RecipientStatus.QUEUED, RecipientStatus.DEFERRED),
    "release": (RecipientStatus.HELD,),
    "reroute": (
        RecipientStatus.QUEUED,
        RecipientStatus.DEFERRED,
        RecipientStatus.HELD,
        RecipientStatus.FAILED,
        RecipientStatus.EXPIRED,
    ),
}


def new_queue_id(now: float, rng: random.Random | None = None) -> str:
    """A queue ID that sorts by arrival time: 11 hex digits of ms, 5 random.

    The random part only separates IDs of the same millisecond; it is not a
    secret. A listener passes its own ``random.Random``: ``secrets`` makes a
    system call per ID, and releasing the GIL there let the spool's writer
    thread hold up the accepting thread (3 % of a worker's samples).
    """
    bits = rng.getrandbits(20) if rng is not None else secrets.randbits(20)
    return f"{int(now * 1000):011X}{bits:05X}"


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message accepted over SMTP (or from ``sluice sendmail``), ready to store."""

    queue_id: str
    sender: str
    recipients: Sequence[str]
    data: bytes
    subject: str
    received_at: float
    client: str = ""
    helo: str = ""
    #: Every line of ``data`` ends in CRLF (as the listener found it).
    crlf_only: bool = False


@dataclass(frozen=True, slots=True)
class Selected:
    """How many recipients (of how many messages) an action affects."""

    recipients: int
    messages: int


@dataclass(frozen=True, slots=True)
class Control:
    """An operator action on a selection: who does it, and the action's own settings."""

    #: "hold", "release" or "reroute"
    action: str
    #: admin user name, "api", "cli:$USER"
    actor: str
    #: hold: why (shown as the recipients' reason)
    reason: str = ""
    #: reroute: the provider for the next attempt
    provider: str | None = None
    #: release: whether the time held counts toward retry.give_up_after
    age_while_held: bool = False


@dataclass(frozen=True, slots=True)
class Finish:
    """The decided outcome of one recipient's attempt, ready to persist."""

    recipient_id: int
    attempt_id: int
    status: RecipientStatus
    attempt_status: AttemptStatus
    next_attempt_at: float | None
    code: int | None
    reply: str
    provider: str | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A stored webhook event and how posting it went."""

    id: int
    endpoint: str
    event_id: str
    event: str
    queue_id: str
    body: str
    created_at: float
    attempts: int
    next_attempt_at: float
    last_attempt_at: float | None
    delivered_at: float | None
    last_status: int | None
    last_error: str

    @classmethod
    def from_row(cls, row: Any) -> OutboxRow:  # sqlite3.Row or aiosqlite.Row
        return cls(**{name: row[name] for name in cls.__slots__})


class DsnVerdict(StrEnum):
    """What ``Spool.enqueue_dsn`` did."""

    QUEUED = "queued"
    #: every recipient reported already had a DSN of this kind
    ALREADY_SENT = "already sent"
    #: the sender reached notify.dsn_per_hour: withheld (and not tried again)
    RATE_LIMITED = "rate limited"


@dataclass(frozen=True, slots=True)
class OAuthGrant:
    """A provider's stored sign-in (OAuth 2.0 device grant): its refresh token and state."""

    provider: str
    refresh_token: str = field(repr=False)
    #: "connected", or "failed" once the provider refused the token
    state: str = "connected"
    error: str = ""
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AttemptBucket:
    """Delivery-log rows of one status in one clock hour (``Spool.attempt_buckets``).

    ``hour`` counts whole hours from the ``start`` asked for; rows between
    ``since`` and ``start`` fall in hour ``-1``.
    """

    hour: int
    status: AttemptStatus
    count: int
    #: how many of ``count`` started at or after ``hour_ago``
    last_hour: int


@dataclass(frozen=True, slots=True)
class SpoolHealth:
    """What ``/healthz`` needs to know about the store."""

    writes: WriteHealth
    #: None when this process runs no checkpointer (``sluice queue``)
    checkpoints: CheckpointHealth | None


class Spool:
    """The store: accepted mail, per-recipient state and the delivery log.

    Open it with ``await Spool.open(path)`` and close it with ``aclose()``.
    ``wake`` is set whenever new mail becomes due, so the scheduler starts at
    once instead of at its next poll.
    """

    def __init__(
        self,
        path: Path,
        writer: Writer,
        reader: aiosqlite.Connection,
        clock: Clock,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._checkpointer = checkpointer
        self.wake = asyncio.Event()
        #: set when webhook events are stored, so the sender posts them at once
        self.outbox_wake = asyncio.Event()
        #: bounces and the suppression list
        self.suppressions = Suppressions(writer, reader, clock, outbox_wake=self.outbox_wake)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        checkpoints: bool = False,
    ) -> Spool:
        """Open (creating it if needed) the spool at ``path``.

        ``checkpoints=True`` (the daemon) also starts the ``Checkpointer``
        that copies the WAL into the database for every process writing it.
        """
        spool_path = Path(path)
        try:
            spool_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            conn = await asyncio.to_thread(connect, spool_path)
            await asyncio.to_thread(_init_schema, conn)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"cannot open spool {spool_path}: {exc}") from exc
        lock = write_lock_path(spool_path)
        writer = Writer(conn, asyncio.get_running_loop(), lock_path=lock, clock=clock)
        reader = await aiosqlite.connect(spool_path, timeout=30)
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA busy_timeout=30000")
        checkpointer = None
        if checkpoints:
            checkpointer = Checkpointer(spool_path, lock, clock=clock)
        return cls(spool_path, writer, reader, clock, checkpointer)

    async def aclose(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.close()
        await self._writer.close()
        await self._reader.close()

    async def __aenter__(self) -> Spool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ writes

    async def enqueue(self, msg: NewMessage) -> str:
        """Store a message and its recipients in one durable transaction."""
        stream = _stream_of(msg.data)
        queue_id = await self._writer.submit(lambda c: _insert_message(c, msg, stream))
        self.wake.set()
        return queue_id

    async def enqueue_dsn(
        self,
        msg: NewMessage,
        *,
        recipient_ids: Sequence[int],
        kind: str,
        sender: str,
        per_hour: int,
    ) -> DsnVerdict:
        """Enqueue a DSN about ``recipient_ids`` to ``sender``, at most once each, rate-limited.

        The check, the marks and the message are one transaction: a crash
        cannot send a DSN twice, nor mark one that was never queued.
        """
        now = self._clock()

        def job(c: sqlite3.Connection) -> DsnVerdict:
            fresh = [
                rid
                for rid in recipient_ids
                if c.execute(QUERIES["dsn_marked"], {"recipient_id": rid, "kind": kind}).fetchone()
                is None
            ]
            if not fresh:
                return DsnVerdict.ALREADY_SENT
            sent = c.execute(
                QUERIES["dsn_sent_recently"], {"sender": sender, "since": now - 3600}
            ).fetchone()[0]
            verdict = DsnVerdict.RATE_LIMITED if sent >= per_hour else DsnVerdict.QUEUED
            if verdict is DsnVerdict.QUEUED:
                _insert_message(c, msg)
            c.executemany(
                QUERIES["dsn_mark"],
                [
                    {
                        "recipient_id": rid,
                        "kind": kind,
                        "sender": sender,
                        "dsn_queue_id": msg.queue_id if verdict is DsnVerdict.QUEUED else "",
                        "now": now,
                    }
                    for rid in fresh
                ],
            )
            return verdict

        verdict = await self._writer.submit(job)
        if verdict is DsnVerdict.QUEUED:
            self.wake.set()
        return verdict

    async def claim_due(self, limit: int, lease: float) -> list[Claim]:
        """``claim``'s claims alone."""
        return (await self.claim(limit, lease)).claims

    async def claim(self, limit: int, lease: float) -> Claimed:
        """Lease up to ``limit`` due messages (all their due recipients) to attempts.

        Each claimed recipient gets an in-progress delivery-log row in the same
        transaction. What the attempt needs to read comes with the claim, in
        the same hop to the writer thread: the message's bytes, the
        suppression entries of its recipients, and the operator pauses in
        force (a pause set before this transaction holds the mail it claims).
        """
        now = self._clock()

        def job(c: sqlite3.Connection) -> Claimed:
            pauses = _pauses(c.execute(QUERIES["pauses"], {"now": now}))
            rows = c.execute(QUERIES["due_messages"], {"now": now, "limit": limit * 4}).fetchall()
            message_ids = list(dict.fromkeys(r["message_id"] for r in rows))[:limit]
            claims = []
            for mid in message_ids:
                rcpts = c.execute(
                    QUERIES["claim_recipients"],
                    {"message_id": mid, "now": now, "lease_until": now + lease},
                ).fetchall()
                env = c.execute(QUERIES["message_envelope"], {"message_id": mid}).fetchone()
                if not rcpts or env is None:
                    continue
                body = c.execute(QUERIES["body"], {"message_id": mid}).fetchone()
                addresses = json.dumps(sorted({normalize(r["rcpt"]) for r in rcpts}))
                suppressions = c.execute(
                    QUERIES["suppressions_in_force"], {"addresses": addresses, "now": now}
                )
                claim = Claim(
                    data=bytes(body["data"]) if body is not None else None,
                    crlf_only=body is not None and bool(body["crlf_only"]),
                    suppressions=tuple(map(Suppression.from_row, suppressions)),
                    message_id=mid,
                    queue_id=env["queue_id"],
                    sender=env["sender"],
                    received_at=env["received_at"],
                    subject=env["subject"],
                    recipients={
                        r["id"]: ClaimedRecipient(
                            r["rcpt"],
                            r["attempts"],
                            r["since"],
                            route_override=r["route_override"],
                            was_held=r["released_at"] is not None,
                        )
                        for r in rcpts
                    },
                )
                for r in rcpts:
                    cur = c.execute(
                        QUERIES["insert_attempt"],
                        {
                            "recipient_id": r["id"],
                            "message_id": mid,
                            "queue_id": env["queue_id"],
                            "rcpt": r["rcpt"],
                            "subject": env["subject"],
                            "now": now,
                        },
                    )
                    assert cur.lastrowid is not None
                    claim.attempt_ids[r["id"]] = cur.lastrowid
                claims.append(claim)
            return Claimed(claims, pauses)

        return await self._writer.submit(job, durable=False)

    async def finish(self, finishes: Iterable[Finish], events: Sequence[OutboxEvent] = ()) -> int:
        """Persist outcomes, and the webhook events that report them; returns how many moved.

        A recipient no longer ``sending`` (deleted, or reclaimed) is left alone
        and its log row is still closed, so the log tells what happened.
        """
        items = list(finishes)
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
            insert_events(c, events)
            moved = 0
            for f in items:
                row = c.execute(
                    QUERIES["finish_recipient"],
                    {
                        "id": f.recipient_id,
                        "status": f.status.value,
                        "next_attempt_at": f.next_attempt_at,
                        "reply": f.reply,
                        "provider": f.provider,
                        "now": now,
                    },
                ).fetchone()
                moved += row is not None
                c.execute(
                    QUERIES["finish_attempt"],
                    {
                        "id": f.attempt_id,
                        "status": f.attempt_status.value,
                        "provider": f.provider,
                        "code": f.code,
                        "reply": f.reply,
                        "now": now,
                    },
                )
            return moved

        moved = await self._writer.submit(job)
        if any(f.status is RecipientStatus.QUEUED for f in items):
            self.wake.set()
        if events:
            self.outbox_wake.set()
        return moved

    async def add_events(self, events: Sequence[OutboxEvent]) -> None:
        """Store webhook events that no outcome carries (a provider's state change)."""
        if events:
            await self._writer.submit(lambda c: insert_events(c, events))
            self.outbox_wake.set()

    async def outbox_next(self, endpoint: str) -> OutboxRow | None:
        """An endpoint's oldest unacknowledged event (read on the writer: always fresh)."""
        rows = await self._writer.submit(
            lambda c: c.execute(QUERIES["outbox_next"], {"endpoint": endpoint}).fetchall(),
            durable=False,
        )
        return OutboxRow.from_row(rows[0]) if rows else None

    async def outbox_delivered(self, row_id: int, status: int) -> None:
        now = self._clock()
        await self._writer.submit(
            lambda c: c.execute(
                QUERIES["outbox_delivered"], {"id": row_id, "status": status, "now": now}
            )
        )

    async def outbox_failed(
        self, row_id: int, *, status: int | None, error: str, next_attempt_at: float
    ) -> None:
        now = self._clock()
        params = {
            "id": row_id,
            "status": status,
            "error": error,
            "next_attempt_at": next_attempt_at,
            "now": now,
        }
        await self._writer.submit(lambda c: c.execute(QUERIES["outbox_failed"], params))

    async def outbox_recent(self, endpoint: str, limit: int = 50) -> list[OutboxRow]:
        """The latest events of one endpoint, newest first (the admin's Webhooks page)."""
        params = {"endpoint": endpoint, "limit": limit}
        rows = await self._reader.execute_fetchall(QUERIES["outbox_recent"], params)
        return [OutboxRow.from_row(r) for r in rows]

    async def outbox_counts(self) -> dict[str, dict[str, int]]:
        """Per endpoint URL: events ``pending``, ``delivered``, and ``failing`` (tried, waiting)."""
        rows = await self._reader.execute_fetchall(QUERIES["outbox_counts"])
        return {
            r["endpoint"]: {k: int(r[k] or 0) for k in ("pending", "delivered", "failing")}
            for r in rows
        }

    async def prune_notifications(self, *, events_before: float, dsn_before: float) -> None:
        """Drop webhook events, and DSN marks, older than the times given."""

        def job(c: sqlite3.Connection) -> None:
            c.execute(QUERIES["prune_outbox"], {"before": events_before})
            c.execute(QUERIES["prune_dsn_sent"], {"before": dsn_before})

        await self._writer.submit(job)

    async def release(
        self, claim: Claim, *, reply: str, next_attempt_at: float | None = None
    ) -> None:
        """Give a claim back without counting an attempt (e.g. at shutdown)."""
        now = self._clock()
        due = now if next_attempt_at is None else next_attempt_at

        def job(c: sqlite3.Connection) -> None:
            for rid in claim.recipients:
                c.execute(
                    QUERIES["release_recipient"],
                    {
                        "id": rid,
                        "status": RecipientStatus.QUEUED.value,
                        "next_attempt_at": due,
                        "reply": reply,
                        "now": now,
                    },
                )
                c.execute(
                    QUERIES["finish_attempt"],
                    {
                        "id": claim.attempt_ids[rid],
                        "status": AttemptStatus.DEFERRED.value,
                        "provider": None,
                        "code": None,
                        "reply": reply,
                        "now": now,
                    },
                )

        await self._writer.submit(job)

    async def requeue_inflight(self) -> int:
        """At start-up: recipients a crash left ``sending`` go back to the queue."""
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
            n = c.execute(QUERIES["requeue_inflight"], {"now": now}).rowcount
            c.execute(QUERIES["close_inflight_attempts"], {"now": now})
            return n

        n = await self._writer.submit(job)
        if n:
            self.wake.set()
        return n

    async def requeue_expired_leases(self) -> int:
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
            c.execute(QUERIES["close_expired_lease_attempts"], {"now": now})
            return int(c.execute(QUERIES["requeue_expired_leases"], {"now": now}).rowcount)

        n = await self._writer.submit(job)
        if n:
            self.wake.set()
        return n

    async def retry_now(self, queue_id: str) -> int:
        """Make every unsent recipient of a message due now (``postqueue -i``)."""
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
            if c.execute(QUERIES["message_by_queue_id"], {"queue_id": queue_id}).fetchone() is None:
                raise UnknownMessage(queue_id)
            return len(
                c.execute(QUERIES["retry_message"], {"queue_id": queue_id, "now": now}).fetchall()
            )

        n = await self._writer.submit(job)
        self.wake.set()
        return n

    async def delete(self, queue_id: str) -> None:
        """Delete a message (``postsuper -d``); its log rows stay."""

        def job(c: sqlite3.Connection) -> None:
            if not c.execute(QUERIES["delete_message"], {"queue_id": queue_id}).fetchall():
                raise UnknownMessage(queue_id)

        await self._writer.submit(job)

    # --------------------------------------------------------- operator controls

    async def count_selected(self, selection: Selection, action: str) -> Selected:
        """How many recipients ``action`` would affect now (the confirmation step)."""
        params = _selection_params(selection, action, self._clock())
        sql = _with_selected(QUERIES["count_selected"])
        async with self._reader.execute(sql, params) as cur:
            row = await cur.fetchone()
        assert row is not None
        return Selected(int(row["recipients"]), int(row["messages"]))

    async def control(
        self, selection: Selection, control: Control, *, endpoints: Sequence[Endpoint] = ()
    ) -> int:
        """Hold, release or reroute the selected recipients; audited; returns how many.

        Hold (``postsuper -h``): queued and deferred recipients are never
        claimed until released. Release (``postsuper -H``): due now. Reroute
        (KumoMTA's ``rebind``): the next attempt goes through one provider.
        An empty selection affects nothing (``Selection.everything`` to mean all).

        ``endpoints`` (``notify.webhooks``) get a ``held`` or ``released``
        event per recipient changed, stored in the same transaction.
        """
        now = self._clock()
        params = _selection_params(selection, control.action, now)
        params["now"] = now
        if control.action == "hold":
            query = "hold_selected"
            params["reply"] = f"held by {control.actor}" + (
                f": {control.reason}" if control.reason else ""
            )
        elif control.action == "release":
            query = "release_selected"
            params["reply"] = f"released by {control.actor}"
            params["age_while_held"] = control.age_while_held
        elif control.action == "reroute":
            if not control.provider:
                raise ValueError("reroute needs a provider")
            query = "reroute_selected"
            params["via"] = control.provider
        else:
            raise ValueError(f"unknown action {control.action!r}")
        sql = _with_selected(QUERIES[query])
        detail = control.reason
        if control.action == "reroute":
            detail = f"via {control.provider}"

        kind = _CONTROL_EVENT.get(control.action)
        status = RecipientStatus.HELD if control.action == "hold" else RecipientStatus.QUEUED

        def job(c: sqlite3.Connection) -> tuple[int, bool]:
            changed = c.execute(sql, params).fetchall()
            _audit(
                c, now, control.actor, control.action, selection.describe(), len(changed), detail
            )
            events: list[OutboxEvent] = []
            if kind is not None and endpoints:
                events = control_events(
                    endpoints,
                    kind,
                    (Affected(r["id"], r["queue_id"], r["rcpt"]) for r in changed),
                    status=status.value,
                    reason=str(params["reply"]),
                    actor=control.actor,
                    now=now,
                )
                insert_events(c, events)
            return len(changed), bool(events)

        n, evented = await self._writer.submit(job)
        if n and control.action != "hold":
            self.wake.set()
        if evented:
            self.outbox_wake.set()
        return n

    async def hold_claimed(
        self,
        claim: Claim,
        rids: Iterable[int],
        reason: str,
        *,
        actor: str = "hold.rules",
        endpoints: Sequence[Endpoint] = (),
    ) -> int:
        """Put claimed recipients on hold (a ``hold.rules`` rule); no attempt is logged.

        ``endpoints`` get a ``held`` event per recipient held, in the same transaction.
        """
        now = self._clock()
        ids = list(rids)

        def job(c: sqlite3.Connection) -> tuple[int, bool]:
            held: list[Affected] = []
            for rid in ids:
                row = c.execute(
                    QUERIES["hold_claimed"], {"id": rid, "now": now, "reply": reason}
                ).fetchone()
                if row is not None:
                    held.append(Affected(rid, claim.queue_id, claim.recipients[rid].address))
                c.execute(QUERIES["delete_attempt"], {"id": claim.attempt_ids[rid]})
            events = control_events(
                endpoints,
                EventType.HELD,
                held,
                status=RecipientStatus.HELD.value,
                reason=reason,
                actor=actor,
                now=now,
            )
            insert_events(c, events)
            return len(held), bool(events)

        n, evented = await self._writer.submit(job)
        if evented:
            self.outbox_wake.set()
        return n

    async def expire_held(self, expire_after: float) -> int:
        """Held longer than ``expire_after`` seconds: expired, with the reason; audited."""
        now = self._clock()
        reply = (
            f"5.4.7 held longer than hold.expire_after ({expire_after:g}s); "
            "expired without delivery"
        )

        def job(c: sqlite3.Connection) -> int:
            n = len(
                c.execute(
                    QUERIES["expire_held"],
                    {"before": now - expire_after, "now": now, "reply": reply},
                ).fetchall()
            )
            if n:
                _audit(c, now, "sluice", "expire-held", "hold.expire_after", n, reply)
            return n

        return await self._writer.submit(job)

    async def pause_provider(
        self, provider: str, *, actor: str, reason: str = "", until: float | None = None
    ) -> None:
        """Pause delivery through ``provider`` (``ALL_PROVIDERS``: all); audited."""
        now = self._clock()
        detail = reason + (f" (until {_utc(until)})" if until is not None else "")

        def job(c: sqlite3.Connection) -> None:
            c.execute(
                QUERIES["pause_set"],
                {
                    "provider": provider,
                    "reason": reason,
                    "until": until,
                    "actor": actor,
                    "now": now,
                },
            )
            _audit(c, now, actor, "pause", provider, 0, detail)

        await self._writer.submit(job)

    async def resume_provider(self, provider: str, *, actor: str) -> int | None:
        """End a pause; recipients waiting for it are due now. None: it was not paused."""
        now = self._clock()
        pattern = "%paused by operator%"
        if provider != ALL_PROVIDERS:
            pattern = "%" + like_escape(f"{provider}: paused by operator") + "%"

        def job(c: sqlite3.Connection) -> int | None:
            if not c.execute(QUERIES["pause_delete"], {"provider": provider}).fetchall():
                return None
            n = len(c.execute(QUERIES["wake_paused"], {"now": now, "pattern": pattern}).fetchall())
            _audit(c, now, actor, "resume", provider, n, "")
            return n

        n = await self._writer.submit(job)
        if n:
            self.wake.set()
        return n

    async def end_expired_pauses(self) -> list[str]:
        """Forget pauses whose duration ran out (they resumed by themselves); audited."""
        now = self._clock()

        def job(c: sqlite3.Connection) -> list[str]:
            ended = [r["provider"] for r in c.execute(QUERIES["pauses_end_expired"], {"now": now})]
            for provider in ended:
                _audit(c, now, "sluice", "resume", provider, 0, "the pause ran out")
            return ended

        # Not fsynced on its own: a pause that ran out is no pause whether or
        # not this row survives a power cut (the next sweep removes it again).
        return await self._writer.submit(job, durable=False)

    async def prune(self, *, log_retention: float, keep_sent: float, limit: int = 5000) -> int:
        """Drop old log rows and long-finished messages; returns messages removed."""
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
            c.execute(QUERIES["prune_attempts"], {"before": now - log_retention})
            return c.execute(
                QUERIES["prune_finished_messages"], {"before": now - keep_sent, "limit": limit}
            ).rowcount

        return await self._writer.submit(job)

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int:
        """Add to a counter kept across restarts (e.g. a provider's daily usage).

        Committed without its own fsync: it survives a process crash at once,
        and a power cut once the delivery's outcome (always durable, written
        right after) is committed, since WAL frames reach the disk in order.
        """
        return await self._writer.submit(
            lambda c: c.execute(
                QUERIES["counter_add"], {"name": name, "window": window, "delta": delta}
            ).fetchone()[0],
            durable=False,
        )

    async def counter_prune(self, name: str, before: str) -> None:
        """Delete a counter's windows before ``before`` (a rolling limit's old slots)."""
        await self._writer.submit(
            lambda c: c.execute(QUERIES["counter_prune"], {"name": name, "window": before}),
            durable=False,
        )

    async def meta_set(self, values: dict[str, str]) -> None:
        """Record daemon status values (e.g. the last reload) for other processes."""
        await self._writer.submit(
            lambda c: c.executemany(
                QUERIES["meta_set"], [{"key": k, "value": v} for k, v in values.items()]
            )
        )

    async def save_oauth_grant(self, provider: str, refresh_token: str) -> None:
        """Store a provider's refresh token (a sign-in, or a rotation by the provider)."""
        now = self._clock()
        await self._writer.submit(
            lambda c: c.execute(
                QUERIES["oauth_grant_set"],
                {"provider": provider, "refresh_token": refresh_token, "now": now},
            )
        )

    async def oauth_grant_failed(self, provider: str, error: str) -> None:
        """The provider refused the stored token (revoked, expired): mark it failed."""
        now = self._clock()
        await self._writer.submit(
            lambda c: c.execute(
                QUERIES["oauth_grant_failed"], {"provider": provider, "error": error, "now": now}
            )
        )

    async def probe_write(self, size: int = 1 << 20) -> None:
        """Grow the spool by ``size`` bytes and give them back, durably: can we write again?

        ``/healthz`` tries it while writes are failing, so that the failure
        clears once there is room again, even with no mail coming in. A small
        write would prove little: it can fit in pages the spool already has.

        Raises:
            SpoolError: it does not fit (the disk is still full) or fails.
        """

        def job(c: sqlite3.Connection) -> None:
            c.execute(QUERIES["health_probe_put"], {"size": size})
            c.execute(QUERIES["health_probe_drop"])

        await self._writer.submit(job)

    def health(self) -> SpoolHealth:
        """The last write failure and success, and how checkpoints go; no I/O."""
        checkpoints = None
        if self._checkpointer is not None:
            checkpoints = self._checkpointer.health
            if not self._checkpointer.alive and checkpoints.running:
                checkpoints = replace(checkpoints, running=False)
        return SpoolHealth(self._writer.health, checkpoints)

    # ------------------------------------------------------------------- reads

    async def oauth_grant(self, provider: str) -> OAuthGrant | None:
        """A provider's stored sign-in, or ``None`` if nobody signed it in."""
        async with self._reader.execute(QUERIES["oauth_grant_get"], {"provider": provider}) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return OAuthGrant(
            provider=row["provider"],
            refresh_token=row["refresh_token"],
            state=row["state"],
            error=row["error"],
            updated_at=row["updated_at"],
        )

    async def meta_get(self, key: str) -> str | None:
        async with self._reader.execute(QUERIES["meta_get"], {"key": key}) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None

    async def counter_get(self, name: str, window: str) -> int:
        async with self._reader.execute(
            QUERIES["counter_get"], {"name": name, "window": window}
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def counter_since(self, name: str, window: str) -> dict[str, int]:
        """A counter's windows from ``window`` on (keys sort as the windows do)."""
        async with self._reader.execute(
            QUERIES["counter_since"], {"name": name, "window": window}
        ) as cur:
            return {str(row[0]): int(row[1]) async for row in cur}

    async def counts_by_status(self) -> dict[RecipientStatus, int]:
        counts = dict.fromkeys(RecipientStatus, 0)
        async with self._reader.execute(QUERIES["counts_by_status"]) as cur:
            async for row in cur:
                counts[RecipientStatus(row["status"])] = row["n"]
        return counts

    async def body(self, message_id: int) -> bytes:
        """The stored bytes of a message (the scheduler reads them for each attempt).

        The reader connection is shared, and a statement another coroutine left
        open between two hops keeps its read transaction, hence an older WAL
        snapshot, alive: a message committed after it looks missing. So the
        read is one hop, and a miss is confirmed on the writer, which sees
        every commit, before ``UnknownMessage`` is raised.
        """
        params = {"message_id": message_id}
        rows = list(await self._reader.execute_fetchall(QUERIES["body"], params))
        if not rows:
            rows = await self._writer.submit(
                lambda c: c.execute(QUERIES["body"], params).fetchall()
            )
        if not rows:
            raise UnknownMessage(str(message_id))
        return bytes(rows[0]["data"])

    async def get(self, queue_id: str) -> MessageDetail:
        async with self._reader.execute(
            QUERIES["message_by_queue_id"], {"queue_id": queue_id}
        ) as cur:
            msg = await cur.fetchone()
        if msg is None:
            raise UnknownMessage(queue_id)
        params = {"message_id": msg["id"]}
        async with self._reader.execute(QUERIES["message_recipients"], params) as cur:
            rcpts = [QueueEntry.from_row(r) async for r in cur]
        async with self._reader.execute(QUERIES["message_attempts"], params) as cur:
            attempts = [LogEntry.from_row(r) async for r in cur]
        return MessageDetail(
            message_id=msg["id"],
            queue_id=msg["queue_id"],
            sender=msg["sender"],
            subject=msg["subject"],
            received_at=msg["received_at"],
            size=msg["size"],
            client=msg["client"],
            helo=msg["helo"],
            recipients=rcpts,
            attempts=attempts,
        )

    async def raw(self, queue_id: str) -> bytes:
        """The stored bytes of a message, by queue ID (for ``.eml`` download)."""
        detail = await self.get(queue_id)
        return await self.body(detail.message_id)

    async def list_queue(
        self,
        *,
        statuses: Iterable[RecipientStatus] | None = None,
        search: str | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[QueueEntry]:
        """One page of queue entries, newest first; keyset pagination on ``id``.

        Pass the last entry's ``id`` as ``before_id`` for the next page: the
        cost of a page does not depend on how deep it is.
        """
        where: list[str] = ["1=1"]
        params: dict[str, Any] = {"limit": limit}
        if statuses is not None:
            _status_filter("r.status", statuses, where, params)
        if before_id is not None:
            where.append("r.id < :before_id")
            params["before_id"] = before_id
        if search:
            where.append(
                "(r.rcpt LIKE :q ESCAPE '\\' OR m.subject LIKE :q ESCAPE '\\'"
                " OR m.sender LIKE :q ESCAPE '\\' OR m.queue_id = :exact)"
            )
            params["q"] = "%" + like_escape(search) + "%"
            params["exact"] = search
        sql = (
            "SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at,"
            " r.last_attempt_at, r.next_attempt_at, r.attempts, r.status, r.last_reply,"
            " r.provider, m.size FROM recipients AS r JOIN messages AS m ON m.id = r.message_id"
            f" WHERE {' AND '.join(where)} ORDER BY r.id DESC LIMIT :limit"
        )
        async with self._reader.execute(sql, params) as cur:
            return [QueueEntry.from_row(r) async for r in cur]

    async def list_log(
        self,
        *,
        statuses: Iterable[AttemptStatus] | None = None,
        search: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[LogEntry]:
        """One page of the delivery log, newest first; keyset pagination on ``id``."""
        where: list[str] = ["1=1"]
        params: dict[str, Any] = {"limit": limit}
        if statuses is not None:
            _status_filter("status", statuses, where, params)
        if since is not None:
            where.append("started_at >= :since")
            params["since"] = since
        if until is not None:
            where.append("started_at < :until")
            params["until"] = until
        if before_id is not None:
            where.append("id < :before_id")
            params["before_id"] = before_id
        if search:
            where.append(
                "(rcpt LIKE :q ESCAPE '\\' OR subject LIKE :q ESCAPE '\\' OR queue_id = :exact)"
            )
            params["q"] = "%" + like_escape(search) + "%"
            params["exact"] = search
        sql = f"SELECT * FROM attempts WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT :limit"
        async with self._reader.execute(sql, params) as cur:
            return [LogEntry.from_row(r) async for r in cur]

    async def oldest_pending(self) -> float | None:
        """When the longest-waiting unsent recipient entered the queue (None: none waits).

        Also the read ``/healthz`` makes to learn that the spool answers.
        """
        async with self._reader.execute(QUERIES["oldest_pending"]) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    async def provider_failures(self, *, since: float) -> dict[str, int]:
        """Failed or deferred attempts per provider since ``since`` (the alert's count)."""
        rows = await self._reader.execute_fetchall(
            QUERIES["provider_failures_since"], {"since": since}
        )
        return {str(r["provider"]): int(r["n"]) for r in rows}

    async def attempt_buckets(
        self, *, start: float, since: float, hour_ago: float
    ) -> list[AttemptBucket]:
        """Delivery-log rows since ``since`` by clock hour from ``start`` and status.

        One pass over the ``attempts_started`` index: its cost follows the
        traffic after ``since``, not the size of the log.
        """
        params = {"start": start, "since": since, "hour_ago": hour_ago}
        async with self._reader.execute(QUERIES["attempt_buckets"], params) as cur:
            return [
                AttemptBucket(
                    hour=int(r["hour"]),
                    status=AttemptStatus(r["status"]),
                    count=int(r["n"]),
                    last_hour=int(r["last_hour"] or 0),
                )
                async for r in cur
            ]

    async def pauses(self) -> dict[str, ProviderPause]:
        """Operator pauses in force now, by provider id (``ALL_PROVIDERS``: all).

        For the admin and the CLI; the scheduler gets them with each ``claim``.
        """
        rows = await self._reader.execute_fetchall(QUERIES["pauses"], {"now": self._clock()})
        return _pauses(rows)

    async def audit_log(self, *, before_id: int | None = None, limit: int = 50) -> list[AuditEntry]:
        """One page of the audit log, newest first; keyset pagination on ``id``."""
        params = {"before_id": before_id, "limit": limit}
        async with self._reader.execute(QUERIES["audit_page"], params) as cur:
            return [AuditEntry.from_row(r) async for r in cur]

    # ---------------------------------------------------- admin session version

    async def admin_session_version(self) -> int:
        """The admin's current session version (0 until the first revocation)."""
        async with self._reader.execute(QUERIES["admin_session_version"]) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def revoke_admin_sessions(self) -> int:
        """End every admin session by starting a new session version; returns it."""
        return await self._writer.submit(
            lambda c: int(c.execute(QUERIES["admin_sessions_revoke"]).fetchone()[0])
        )


def _pauses(rows: Iterable[Any]) -> dict[str, ProviderPause]:
    return {r["provider"]: ProviderPause.from_row(r) for r in rows}


def _insert_message(c: sqlite3.Connection, msg: NewMessage, stream: str = "") -> str:
    cur = c.execute(
        QUERIES["insert_message"],
        {
            "queue_id": msg.queue_id,
            "received_at": msg.received_at,
            "sender": msg.sender,
            "subject": msg.subject,
            "size": len(msg.data),
            "client": msg.client,
            "helo": msg.helo,
            "stream": stream,
        },
    )
    mid = cur.lastrowid
    c.execute(
        QUERIES["insert_body"], {"message_id": mid, "data": msg.data, "crlf_only": msg.crlf_only}
    )
    c.executemany(
        QUERIES["insert_recipient"],
        [{"message_id": mid, "rcpt": r, "now": msg.received_at} for r in msg.recipients],
    )
    return msg.queue_id


def read_meta(path: Path, key: str) -> str | None:
    """Read one ``meta`` value without opening the spool for writing (CLI helpers).

    Blocking; for short-lived commands (``sluice reload``, ``sluice sendmail``)
    only. Returns None if the spool or the key does not exist or is unreadable.
    """
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute(QUERIES["meta_get"], {"key": key}).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _status_filter(
    column: str,
    statuses: Iterable[RecipientStatus | AttemptStatus],
    where: list[str],
    params: dict[str, Any],
) -> None:
    """Add ``column IN (...)`` with one bound parameter per status."""
    wanted = [s.value for s in statuses]
    where.append(f"{column} IN ({', '.join(f':s{i}' for i in range(len(wanted)))})")
    params.update({f"s{i}": value for i, value in enumerate(wanted)})


def _stream_of(data: bytes) -> str:
    """The ``X-Sluice-Stream`` header's value, if any (a cheap look first)."""
    head = HeaderBlock(data)
    if not head.mentions(STREAM_HEADER):
        return ""
    return (head.value(STREAM_HEADER) or "").strip()[:200]


def _selection_params(selection: Selection, action: str, now: float) -> dict[str, Any]:
    """Bound parameters of the ``selected_recipients`` query for ``action``.

    Raises:
        ValueError: the selection is empty (nothing chosen, not ``everything``).
    """
    if selection.empty:
        raise ValueError("choose queue IDs or a filter (or everything)")
    allowed = _ALLOWED.get(action)
    if allowed is None:
        raise ValueError(f"unknown action {action!r}")
    return {
        "allowed": json.dumps([s.value for s in allowed]),
        "queue_ids": json.dumps(list(selection.queue_ids)) if selection.queue_ids else None,
        "sender": selection.sender or None,
        "domain": like_escape(selection.recipient_domain.lower().strip().rstrip("."))
        if selection.recipient_domain
        else None,
        "provider": selection.provider or None,
        "stream": selection.stream or None,
        "received_before": None if selection.older_than is None else now - selection.older_than,
        "statuses": json.dumps([s.value for s in selection.statuses])
        if selection.statuses
        else None,
    }


def _with_selected(sql: str) -> str:
    return f"WITH selected AS ({QUERIES['selected_recipients']}) {sql}"


def _audit(
    c: sqlite3.Connection,
    now: float,
    actor: str,
    action: str,
    target: str,
    count: int,
    detail: str,
) -> None:
    c.execute(
        QUERIES["audit_insert"],
        {
            "now": now,
            "actor": actor,
            "action": action,
            "target": target,
            "count": count,
            "detail": detail,
        },
    )


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _init_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    # One process at a time: the daemon, a worker and the CLI may open together.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, definition in _ADDED_COLUMNS:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        # Version 3: delivery-log statuses in lower case, like recipients'. An
        # older Sluice cannot read these values, so this step has no way back.
        conn.execute(
            "UPDATE attempts SET status = CASE status WHEN 'IN PROGRESS' THEN 'in_progress'"
            " WHEN 'SUCCESS' THEN 'success' WHEN 'FAIL' THEN 'fail' END"
            " WHERE status IN ('IN PROGRESS', 'SUCCESS', 'FAIL')"
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_SCHEMA_VERSION,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
