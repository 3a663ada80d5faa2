"""Read-only views of the spool: a message, the queue, the log, counts, pauses, the audit log.

Every function here reads through the spool's reader connection (aiosqlite,
its own thread), so the admin and the CLI never hold the writer and never see
an uncommitted row. Pages use keyset pagination on ``id``: the cost of a page
does not depend on how deep it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from relay.errors import UnknownMessage
from relay.model import (
    AttemptStatus,
    AuditEntry,
    LogEntry,
    MessageDetail,
    ProviderPause,
    QueueEntry,
    RecipientStatus,
)
from relay.store.db import Reader
from relay.store.sql import QUERIES, like_escape

__all__ = [
    "AttemptBucket",
    "QueueMarks",
    "attempt_buckets",
    "audit_log",
    "counts_by_status",
    "get",
    "list_log",
    "list_queue",
    "oldest_pending",
    "pauses",
    "pauses_of",
    "provider_failures",
    "queue_marks",
]


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
class QueueMarks:
    """What the queue page adds to its rows (``Spool.queue_marks``).

    A recipient's own status stays ``sent`` when a bounce comes back after
    delivery (the bounce is a delivery-log row, ``relay.store.suppressions``);
    the page must still say ``bounced``. And a row's checkbox acts on its whole
    message, so the page says how many recipients that is.
    """

    #: recipients per message (queue ID), all of them, not only those on the page
    recipients: dict[str, int]
    #: recipient row id -> the latest bounce's reply, for recipients that bounced
    bounced: dict[int, str]


def pauses_of(rows: Iterable[Any]) -> dict[str, ProviderPause]:
    """Pause rows by provider id (``sqlite3.Row`` or ``aiosqlite.Row``)."""
    return {r["provider"]: ProviderPause.from_row(r) for r in rows}


async def get(reader: Reader, queue_id: str) -> MessageDetail:
    """A message's envelope, its recipients and its delivery-log rows.

    Raises:
        UnknownMessage: no message has that queue ID.
    """
    async with reader.execute(QUERIES["message_by_queue_id"], {"queue_id": queue_id}) as cur:
        msg = await cur.fetchone()
    if msg is None:
        raise UnknownMessage(queue_id)
    params = {"message_id": msg["id"]}
    async with reader.execute(QUERIES["message_recipients"], params) as cur:
        rcpts = [QueueEntry.from_row(r) async for r in cur]
    async with reader.execute(QUERIES["message_attempts"], params) as cur:
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
        node=msg["node"] or "",
    )


async def list_queue(
    reader: Reader,
    *,
    statuses: Iterable[RecipientStatus] | None,
    search: str | None,
    before_id: int | None,
    limit: int,
) -> list[QueueEntry]:
    """One page of queue entries, newest first."""
    params = _page_params(search, before_id, limit)
    query = "queue_page"
    if statuses is not None:
        query = "queue_page_by_status"
        params["statuses"] = json.dumps([s.value for s in statuses])
    async with reader.execute(QUERIES[query], params) as cur:
        return [QueueEntry.from_row(r) async for r in cur]


async def queue_marks(reader: Reader, queue_ids: Iterable[str]) -> QueueMarks:
    """Recipient counts and bounces after delivery of the given messages (one page's)."""
    params = {"queue_ids": json.dumps(sorted(set(queue_ids)))}
    recipients: dict[str, int] = {}
    async with reader.execute(QUERIES["queue_marks_counts"], params) as cur:
        async for row in cur:
            recipients[row["queue_id"]] = int(row["n"])
    bounced: dict[int, str] = {}
    async with reader.execute(QUERIES["queue_marks_bounced"], params) as cur:
        async for row in cur:
            code, reply = row["code"], row["reply"] or ""
            text = reply if code is None or reply.startswith(str(code)) else f"{code} {reply}"
            bounced[int(row["recipient_id"])] = text
    return QueueMarks(recipients=recipients, bounced=bounced)


async def list_log(
    reader: Reader,
    *,
    statuses: Iterable[AttemptStatus] | None,
    search: str | None,
    since: float | None,
    until: float | None,
    before_id: int | None,
    limit: int,
) -> list[LogEntry]:
    """One page of the delivery log, newest first."""
    params = _page_params(search, before_id, limit)
    params.update(since=since, until=until)
    query = "log_page"
    if statuses is not None:
        query = "log_page_by_status"
        params["statuses"] = json.dumps([s.value for s in statuses])
    async with reader.execute(QUERIES[query], params) as cur:
        return [LogEntry.from_row(r) async for r in cur]


def _page_params(search: str | None, before_id: int | None, limit: int) -> dict[str, Any]:
    """The parameters every page query takes: the search (substring, or queue ID) and keyset."""
    return {
        "q": "%" + like_escape(search) + "%" if search else None,
        "exact": search or None,
        "before_id": before_id,
        "limit": limit,
    }


async def counts_by_status(reader: Reader) -> dict[RecipientStatus, int]:
    """Recipients per state (every state listed, 0 when none)."""
    counts = dict.fromkeys(RecipientStatus, 0)
    async with reader.execute(QUERIES["counts_by_status"]) as cur:
        async for row in cur:
            counts[RecipientStatus(row["status"])] = row["n"]
    return counts


async def oldest_pending(reader: Reader) -> float | None:
    """When the longest-waiting unsent recipient entered the queue (None: none waits)."""
    async with reader.execute(QUERIES["oldest_pending"]) as cur:
        row = await cur.fetchone()
    return float(row[0]) if row is not None and row[0] is not None else None


async def waiting_via(reader: Reader, provider: str) -> int:
    """Recipients still waiting whose last attempt went through ``provider``."""
    async with reader.execute(QUERIES["waiting_via"], {"provider": provider}) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def provider_failures(reader: Reader, since: float) -> dict[str, int]:
    """Failed or deferred attempts per provider since ``since``."""
    rows = await reader.execute_fetchall(QUERIES["provider_failures_since"], {"since": since})
    return {str(r["provider"]): int(r["n"]) for r in rows}


async def attempt_buckets(
    reader: Reader, start: float, since: float, hour_ago: float
) -> list[AttemptBucket]:
    """Delivery-log rows since ``since`` by clock hour from ``start`` and status."""
    params = {"start": start, "since": since, "hour_ago": hour_ago}
    async with reader.execute(QUERIES["attempt_buckets"], params) as cur:
        return [
            AttemptBucket(
                hour=int(r["hour"]),
                status=AttemptStatus(r["status"]),
                count=int(r["n"]),
                last_hour=int(r["last_hour"] or 0),
            )
            async for r in cur
        ]


async def pauses(reader: Reader, now: float) -> dict[str, ProviderPause]:
    """Operator pauses in force at ``now``, by provider id."""
    return pauses_of(await reader.execute_fetchall(QUERIES["pauses"], {"now": now}))


async def audit_log(reader: Reader, before_id: int | None, limit: int) -> list[AuditEntry]:
    """One page of the audit log, newest first."""
    params = {"before_id": before_id, "limit": limit}
    async with reader.execute(QUERIES["audit_page"], params) as cur:
        return [AuditEntry.from_row(r) async for r in cur]
