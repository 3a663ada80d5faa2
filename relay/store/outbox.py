"""Writing webhook events into the outbox, inside a caller's transaction.

Shared by the spool (outcomes, operator holds and releases) and the
suppression store (bounces): each writes the events it reports in the
same transaction as the change, so neither is ever stored without the other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from relay.events import OutboxEvent
from relay.store.sql import QUERIES

__all__ = ["insert_events"]


def insert_events(c: sqlite3.Connection, events: Sequence[OutboxEvent]) -> None:
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
