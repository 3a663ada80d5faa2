"""The queue: mail in (enqueue), out to attempts (claim), and back (finish, release).

Writer jobs are plain functions of the writer's ``sqlite3.Connection``; the
``Spool`` facade hands them to its ``Writer`` as they are, so the hot path
(enqueue, claim, finish) costs what it did before the split: one hop to the
writer thread and one transaction (shared with whatever else is batched)
per call. Operator edits of single messages (retry, delete) and pruning
live here too: they are moves in the same state machine.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from relay.errors import QueueIdTaken, UnknownMessage
from relay.events import OutboxEvent
from relay.model import (
    AddressRule,
    AttemptStatus,
    Claim,
    ClaimedRecipient,
    ProviderPause,
    RcptNote,
    RecipientStatus,
    Suppression,
)
from relay.store.db import Conn, Jobs, Reader
from relay.store.outbox import insert_events
from relay.store.sql import QUERIES
from relay.store.suppressions import normalize
from relay.store.views import pauses_of

__all__ = [
    "QUEUE_ID_DRAWS",
    "Claimed",
    "Finish",
    "NewMessage",
    "body",
    "claim",
    "delete",
    "finish",
    "insert_message",
    "new_queue_id",
    "prune",
    "release",
    "requeue_expired_leases",
    "requeue_inflight",
    "retry_now",
    "stored_under_fresh_id",
]


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
    #: recipient -> what an address rule did to it (``relay.address_rules``)
    notes: Mapping[str, RcptNote] = field(default_factory=dict)


#: queue IDs drawn for one message before giving up (each clash is 1 in 2**20)
QUEUE_ID_DRAWS = 5

_Msg = TypeVar("_Msg")
_Stored = TypeVar("_Stored")


async def stored_under_fresh_id(
    make: Callable[[str], _Msg],
    store: Callable[[_Msg], Awaitable[_Stored]],
    now: float,
    rng: random.Random | None = None,
) -> tuple[_Msg, _Stored]:
    """``make`` a message around a new queue ID and ``store`` it; another ID while one is taken.

    Every producer (the listener, ``sluice sendmail``, a DSN, a provider's test
    message) writes its queue ID into the message itself (its Received
    header, a DSN's text), so a message is made anew for each ID drawn.
    Several messages share a millisecond under load, and two of them draw the
    same 20 bits about once in 200,000 at 2,700 msg/s: the insert then stores
    nothing and raises ``QueueIdTaken``. Returns the message stored and what
    ``store`` returned.

    Raises:
        QueueIdTaken: ``QUEUE_ID_DRAWS`` IDs in a row were taken (the random
            source is broken, not the spool); whatever else ``store`` raises.
    """
    for _ in range(QUEUE_ID_DRAWS - 1):
        msg = make(new_queue_id(now, rng))
        try:
            return msg, await store(msg)
        except QueueIdTaken:
            continue
    msg = make(new_queue_id(now, rng))
    return msg, await store(msg)


@dataclass(frozen=True, slots=True)
class Claimed:
    """What one claiming transaction leased, and the operator pauses in force then."""

    claims: list[Claim]
    #: provider id (``ALL_PROVIDERS``: all) -> its pause
    pauses: dict[str, ProviderPause]


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


def insert_message(c: Conn, msg: NewMessage, stream: str = "", node: str = "") -> str:
    """Store ``msg``, its body and its recipients (due now); returns its queue ID.

    ``node``: the node accepting it (``spool.node``), shown beside it in a fleet.

    Raises:
        QueueIdTaken: another message has ``msg.queue_id``; nothing was stored.
    """
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
            "node": node,
        },
    )
    if cur.rowcount != 1:
        raise QueueIdTaken(f"queue ID {msg.queue_id} is taken")
    mid = cur.lastrowid
    if len(msg.data) < BLOB_IO_FROM or not isinstance(c, sqlite3.Connection):
        c.execute(
            QUERIES["insert_body"],
            {"message_id": mid, "data": msg.data, "crlf_only": msg.crlf_only},
        )
    else:
        c.execute(
            QUERIES["insert_body_room"],
            {"message_id": mid, "size": len(msg.data), "crlf_only": msg.crlf_only},
        )
        assert mid is not None
        with c.blobopen("bodies", "data", mid) as blob:
            blob.write(msg.data)
    notes, plain = msg.notes, _NO_NOTE
    c.executemany(
        QUERIES["insert_recipient"],
        [
            {
                "message_id": mid,
                "rcpt": r,
                "now": msg.received_at,
                "held": (n := notes.get(r, plain)).held,
                "original": n.original or None,
                "rule": n.rule.value if n is not plain else None,
            }
            for r in msg.recipients
        ],
    )
    return msg.queue_id


#: what a recipient no rule touched has (no note)
_NO_NOTE = RcptNote(AddressRule.ALIAS)

#: bodies this large are written and read through a blob handle (``blobopen``):
#: an INSERT of the bytes had SQLite hold two copies of them besides the
#: caller's (the bound value and the record), a SELECT one more (the column).
#: SQLite only: PostgreSQL binds the bytes as they are (binary protocol).
BLOB_IO_FROM = 1 << 20


def _claimed_body(c: Conn, mid: int, size: int) -> tuple[bytes, bool] | None:
    """A message's bytes and whether every line ends in CRLF; ``None`` when it has no body."""
    if size < BLOB_IO_FROM or not isinstance(c, sqlite3.Connection):
        row = c.execute(QUERIES["body"], {"message_id": mid}).fetchone()
        return None if row is None else (bytes(row["data"]), bool(row["crlf_only"]))
    row = c.execute(QUERIES["body_crlf_only"], {"message_id": mid}).fetchone()
    if row is None:
        return None
    with c.blobopen("bodies", "data", mid, readonly=True) as blob:
        return blob.read(), bool(row["crlf_only"])


def claim(c: Conn, now: float, limit: int, lease: float, node: str = "") -> Claimed:
    """Lease up to ``limit`` due messages to ``node``, with what their attempts need to read.

    See ``Spool.claim``: the body, the suppression entries of the recipients
    and the pauses in force come in this same transaction.
    """
    pauses = pauses_of(c.execute(QUERIES["pauses"], {"now": now}))
    rows = c.execute(QUERIES["due_messages"], {"now": now, "limit": limit * 4}).fetchall()
    message_ids = list(dict.fromkeys(r["message_id"] for r in rows))[:limit]
    claims = []
    for mid in message_ids:
        rcpts = c.execute(
            QUERIES["claim_recipients"],
            {"message_id": mid, "now": now, "lease_until": now + lease, "node": node},
        ).fetchall()
        env = c.execute(QUERIES["message_envelope"], {"message_id": mid}).fetchone()
        if not rcpts or env is None:
            continue
        body = _claimed_body(c, mid, env["size"])
        addresses = json.dumps(sorted({normalize(r["rcpt"]) for r in rcpts}))
        suppressions = c.execute(
            QUERIES["suppressions_in_force"], {"addresses": addresses, "now": now}
        )
        claimed = Claim(
            data=body[0] if body is not None else None,
            crlf_only=body is not None and body[1],
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
                    archive=r["rule"] == AddressRule.ARCHIVE,
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
                    "node": node,
                },
            )
            assert cur.lastrowid is not None
            claimed.attempt_ids[r["id"]] = cur.lastrowid
        claims.append(claimed)
    return Claimed(claims, pauses)


def finish(
    c: Conn, now: float, items: Sequence[Finish], events: Sequence[OutboxEvent], node: str = ""
) -> int:
    """Persist outcomes and the events that report them; how many recipients moved.

    Only recipients leased to ``node`` move: one whose lease was taken back
    (and maybe claimed by another node) is left alone; its log row is closed.
    """
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
                "node": node,
            },
        ).fetchone()
        moved += row is not None
        _close_attempt(c, now, f.attempt_id, f.attempt_status, f.provider, f.code, f.reply)
    return moved


def _close_attempt(
    c: Conn,
    now: float,
    attempt_id: int,
    status: AttemptStatus,
    provider: str | None,
    code: int | None,
    reply: str,
) -> None:
    c.execute(
        QUERIES["finish_attempt"],
        {
            "id": attempt_id,
            "status": status.value,
            "provider": provider,
            "code": code,
            "reply": reply,
            "now": now,
        },
    )


def release(c: Conn, now: float, claimed: Claim, reply: str, due: float, node: str = "") -> None:
    """Give a claim back without counting an attempt; its log rows say deferred.

    Only what is still leased to ``node`` goes back (as in ``finish``).
    """
    for rid in claimed.recipients:
        c.execute(
            QUERIES["release_recipient"],
            {
                "id": rid,
                "status": RecipientStatus.QUEUED.value,
                "next_attempt_at": due,
                "reply": reply,
                "now": now,
                "node": node,
            },
        )
        _close_attempt(c, now, claimed.attempt_ids[rid], AttemptStatus.DEFERRED, None, None, reply)


def requeue_inflight(c: Conn, now: float, node: str = "", *, everyone: bool = True) -> int:
    """At start-up: what a crash left ``sending`` is queued again; how many.

    ``everyone=False`` (a shared store): only the leases and attempts of
    ``node``; other nodes' are theirs, or the lease sweep's once they are gone.
    """
    params = {"now": now, "node": node, "everyone": everyone}
    n = int(c.execute(QUERIES["requeue_inflight"], params).rowcount)
    c.execute(QUERIES["close_inflight_attempts"], params)
    return n


def requeue_expired_leases(
    c: Conn,
    now: float,
    keep: Collection[int] = (),
    node: str = "",
    *,
    stale_before: float = 0.0,
    everyone: bool = True,
) -> int:
    """Leases that outlived any attempt are reclaimed, but for the recipients in ``keep``; how many.

    ``keep``: recipients whose outcome the scheduler holds but could not write
    yet (``relay.outbound.pending``); reclaiming them would send them again.

    ``everyone=False`` (a shared store): the leases of ``node``, and of
    another node only once its heartbeat is older than ``stale_before`` (or
    it has no ``nodes`` row): a live node may hold outcomes it has not
    written, which only its own ``keep`` knows.
    """
    params = {
        "now": now,
        "keep": json.dumps(sorted(keep)),
        "node": node,
        "stale_before": stale_before,
        "everyone": everyone,
    }
    c.execute(QUERIES["close_expired_lease_attempts"], params)
    return int(c.execute(QUERIES["requeue_expired_leases"], params).rowcount)


def retry_now(c: Conn, now: float, queue_id: str) -> int:
    """Every unsent recipient of a message due now; how many.

    Raises:
        UnknownMessage: no message has that queue ID.
    """
    if c.execute(QUERIES["message_by_queue_id"], {"queue_id": queue_id}).fetchone() is None:
        raise UnknownMessage(queue_id)
    return len(c.execute(QUERIES["retry_message"], {"queue_id": queue_id, "now": now}).fetchall())


def delete(c: Conn, queue_id: str) -> int:
    """Delete a message; its log rows stay. How many of its recipients were still unsent.

    Raises:
        UnknownMessage: no message has that queue ID.
    """
    (unsent,) = c.execute(
        QUERIES["unsent_recipients_of_message"], {"queue_id": queue_id}
    ).fetchone()
    if not c.execute(QUERIES["delete_message"], {"queue_id": queue_id}).fetchall():
        raise UnknownMessage(queue_id)
    return int(unsent)


def prune(c: Conn, now: float, log_retention: float, keep_sent: float, limit: int) -> int:
    """Drop old log rows and long-finished messages; how many messages went."""
    c.execute(QUERIES["prune_attempts"], {"before": now - log_retention})
    return int(
        c.execute(
            QUERIES["prune_finished_messages"], {"before": now - keep_sent, "limit": limit}
        ).rowcount
    )


async def body(reader: Reader, writer: Jobs, message_id: int) -> bytes:
    """The stored bytes of a message (the scheduler reads them for each attempt).

    The reader connection is shared, and a statement another coroutine left
    open between two hops keeps its read transaction, hence an older WAL
    snapshot, alive: a message committed after it looks missing. So the
    read is one hop, and a miss is confirmed on the writer, which sees
    every commit, before ``UnknownMessage`` is raised.
    """
    params = {"message_id": message_id}
    rows = list(await reader.execute_fetchall(QUERIES["body"], params))
    if not rows:
        rows = await writer.submit(lambda c: c.execute(QUERIES["body"], params).fetchall())
    if not rows:
        raise UnknownMessage(str(message_id))
    return bytes(rows[0]["data"])
