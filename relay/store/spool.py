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
import logging
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite

from relay.errors import SpoolError, UnknownMessage
from relay.model import (
    AttemptStatus,
    Claim,
    ClaimedRecipient,
    LogEntry,
    MessageDetail,
    QueueEntry,
    RecipientStatus,
)
from relay.store.sql import QUERIES, SCHEMA
from relay.store.writer import (
    Checkpointer,
    CheckpointHealth,
    WriteHealth,
    Writer,
    connect,
    write_lock_path,
)

__all__ = [
    "AttemptBucket",
    "Finish",
    "NewMessage",
    "OAuthGrant",
    "Spool",
    "SpoolHealth",
    "new_queue_id",
    "read_meta",
]

log = logging.getLogger("sluice.spool")

Clock = Callable[[], float]

_SCHEMA_VERSION = "2"
#: Columns added since version 1, as (table, column, definition): a spool made
#: before them gets them when opened, with a default that means "not known".
_ADDED_COLUMNS = (("bodies", "crlf_only", "INTEGER NOT NULL DEFAULT 0"),)


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

        def job(c: sqlite3.Connection) -> str:
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
                },
            )
            mid = cur.lastrowid
            c.execute(
                QUERIES["insert_body"],
                {"message_id": mid, "data": msg.data, "crlf_only": msg.crlf_only},
            )
            c.executemany(
                QUERIES["insert_recipient"],
                [{"message_id": mid, "rcpt": r, "now": msg.received_at} for r in msg.recipients],
            )
            return msg.queue_id

        queue_id = await self._writer.submit(job)
        self.wake.set()
        return queue_id

    async def claim_due(self, limit: int, lease: float) -> list[Claim]:
        """Lease up to ``limit`` due messages (all their due recipients) to attempts.

        Each claimed recipient gets an IN PROGRESS delivery-log row in the same
        transaction, and the message's bytes come with the claim: one hop to
        the writer thread instead of a second one to the reader for each body.
        """
        now = self._clock()

        def job(c: sqlite3.Connection) -> list[Claim]:
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
                claim = Claim(
                    data=bytes(body["data"]) if body is not None else None,
                    crlf_only=body is not None and bool(body["crlf_only"]),
                    message_id=mid,
                    queue_id=env["queue_id"],
                    sender=env["sender"],
                    received_at=env["received_at"],
                    subject=env["subject"],
                    recipients={
                        r["id"]: ClaimedRecipient(r["rcpt"], r["attempts"], r["since"])
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
            return claims

        return await self._writer.submit(job, durable=False)

    async def finish(self, finishes: Iterable[Finish]) -> int:
        """Persist outcomes; returns how many recipients moved.

        A recipient no longer ``sending`` (deleted, or reclaimed) is left alone
        and its log row is still closed, so the log tells what happened.
        """
        items = list(finishes)
        now = self._clock()

        def job(c: sqlite3.Connection) -> int:
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
        return moved

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
            params["q"] = "%" + _like_escape(search) + "%"
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
            params["q"] = "%" + _like_escape(search) + "%"
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


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _init_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    # One process at a time: the daemon, a worker and the CLI may open together.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, definition in _ADDED_COLUMNS:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (_SCHEMA_VERSION,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
