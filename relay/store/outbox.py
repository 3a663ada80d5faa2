"""The outboxes: webhook events waiting to be posted, and the DSNs Sluice sends.

Webhook events are written inside a caller's transaction (``insert_events``):
the spool's outcomes, operator holds and releases, and the suppression
store's bounces each write the events they report with the change, so
neither is ever stored without the other. The sender
(``relay/notify/webhooks.py``) then reads and marks them one by one.

A DSN is a message like any other (``queue.insert_message``), queued in the
same transaction as the marks here that keep it to one per recipient and
kind, and the count that keeps it under ``notify.dsn_per_hour``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from relay.events import OutboxEvent
from relay.store.db import Conn, Reader
from relay.store.sql import QUERIES

__all__ = [
    "DsnVerdict",
    "OutboxRow",
    "counts",
    "delivered",
    "dsn_verdict",
    "failed",
    "insert_events",
    "mark_dsns",
    "next_row",
    "prune",
    "recent",
]


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


def insert_events(c: Conn, events: Sequence[OutboxEvent]) -> None:
    """Store ``events`` (due now) on the writer connection ``c``."""
    if not events:
        return
    c.executemany(
        QUERIES["outbox_insert"],
        [
            {
                "endpoint": e.endpoint,
                "event_id": e.event_id,
                "event": e.event,
                "queue_id": e.queue_id,
                "body": e.body,
                "created_at": e.created_at,
            }
            for e in events
        ],
    )


def next_row(c: Conn, endpoint: str) -> OutboxRow | None:
    """An endpoint's oldest unacknowledged event."""
    row = c.execute(QUERIES["outbox_next"], {"endpoint": endpoint}).fetchone()
    return OutboxRow.from_row(row) if row is not None else None


def delivered(c: Conn, now: float, row_id: int, status: int) -> None:
    """The receiver acknowledged the event."""
    c.execute(QUERIES["outbox_delivered"], {"id": row_id, "status": status, "now": now})


def failed(
    c: Conn,
    now: float,
    row_id: int,
    status: int | None,
    error: str,
    next_attempt_at: float,
) -> None:
    """A try failed; the event is due again at ``next_attempt_at``."""
    c.execute(
        QUERIES["outbox_failed"],
        {
            "id": row_id,
            "status": status,
            "error": error,
            "next_attempt_at": next_attempt_at,
            "now": now,
        },
    )


async def recent(reader: Reader, endpoint: str, limit: int) -> list[OutboxRow]:
    """The latest events of one endpoint, newest first."""
    params = {"endpoint": endpoint, "limit": limit}
    rows = await reader.execute_fetchall(QUERIES["outbox_recent"], params)
    return [OutboxRow.from_row(r) for r in rows]


async def counts(reader: Reader) -> dict[str, dict[str, int]]:
    """Per endpoint URL: events ``pending``, ``delivered``, and ``failing``."""
    rows = await reader.execute_fetchall(QUERIES["outbox_counts"])
    return {
        r["endpoint"]: {k: int(r[k] or 0) for k in ("pending", "delivered", "failing")}
        for r in rows
    }


def prune(c: Conn, events_before: float, dsn_before: float) -> None:
    """Drop webhook events, and DSN marks, older than the times given."""
    c.execute(QUERIES["prune_outbox"], {"before": events_before})
    c.execute(QUERIES["prune_dsn_sent"], {"before": dsn_before})


def dsn_verdict(
    c: Conn,
    now: float,
    recipient_ids: Sequence[int],
    kind: str,
    sender: str,
    per_hour: int,
) -> tuple[DsnVerdict, list[int]]:
    """Whether a DSN of ``kind`` about ``recipient_ids`` to ``sender`` goes out now.

    Also returns the recipients not told yet (``mark_dsns`` marks them).
    """
    fresh = [
        rid
        for rid in recipient_ids
        if c.execute(QUERIES["dsn_marked"], {"recipient_id": rid, "kind": kind}).fetchone() is None
    ]
    if not fresh:
        return DsnVerdict.ALREADY_SENT, fresh
    sent = c.execute(
        QUERIES["dsn_sent_recently"], {"sender": sender, "since": now - 3600}
    ).fetchone()[0]
    return (DsnVerdict.RATE_LIMITED if sent >= per_hour else DsnVerdict.QUEUED), fresh


def mark_dsns(
    c: Conn,
    now: float,
    recipient_ids: Sequence[int],
    kind: str,
    sender: str,
    dsn_queue_id: str,
) -> None:
    """Note a DSN sent (``dsn_queue_id``) or withheld (``''``) for each recipient."""
    c.executemany(
        QUERIES["dsn_mark"],
        [
            {
                "recipient_id": rid,
                "kind": kind,
                "sender": sender,
                "dsn_queue_id": dsn_queue_id,
                "now": now,
            }
            for rid in recipient_ids
        ],
    )
