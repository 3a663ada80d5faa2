"""Wake-ups across nodes (#27): LISTEN/NOTIFY sets another node's ``wake`` and ``outbox_wake``.

Two ``Spool`` objects on one PostgreSQL database are two nodes. Nothing here
polls: node B runs no scheduler, so its events can only be set by what its
listener hears from node A's commits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.events import OutboxEvent
from relay.store.queue import NewMessage, new_queue_id
from relay.store.spool import Spool
from tests.pg import PgCluster, PgDatabase

WITHIN = 5.0


def _message() -> NewMessage:
    now = time.time()
    data = b"Subject: s\r\n\r\nhi\r\n"
    return NewMessage(new_queue_id(now), "app@example.org", ["b@example.net"], data, "s", now)


async def _set(event: asyncio.Event) -> None:
    async with asyncio.timeout(WITHIN):
        await event.wait()


@pytest.fixture
async def nodes(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[tuple[Spool, Spool]]:
    """Node A writes; node B listens (and has heard its first wake-up: it listens now)."""
    a = await Spool.open(pg_db.settings(tmp_path / "a" / "spool.sqlite3", node="node-a"))
    b = await Spool.open(pg_db.settings(tmp_path / "b" / "spool.sqlite3", node="node-b"))
    try:
        b.listen()
        await _set(b.wake)  # set once on connecting: what was due before it listened
        b.wake.clear()
        b.outbox_wake.clear()
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_mail_accepted_or_made_due_on_one_node_wakes_another(
    nodes: tuple[Spool, Spool],
) -> None:
    a, b = nodes
    queue_id = await a.enqueue(_message())
    await _set(b.wake)
    assert not b.outbox_wake.is_set()  # mail, not webhook events
    b.wake.clear()
    assert await a.retry_now(queue_id) == 1
    await _set(b.wake)


async def test_webhook_events_wake_another_nodes_sender(nodes: tuple[Spool, Spool]) -> None:
    a, b = nodes
    body = '{"id": "e1", "type": "provider_state"}'
    await a.add_events(
        [OutboxEvent("http://127.0.0.1:9/hook", "e1", "provider_state", "", body, 1.0)]
    )
    await _set(b.outbox_wake)
    assert not b.wake.is_set()


async def test_the_listener_comes_back_after_its_session_ends(
    pg_cluster: PgCluster, pg_db: PgDatabase, nodes: tuple[Spool, Spool]
) -> None:
    """Polling covers the gap; once back, the listener hears the next commit again."""
    a, b = nodes
    ended = pg_cluster.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{pg_db.name}' AND application_name = 'sluice listener node-b'"
    )
    assert ended == "1"
    await _set(b.wake)  # connected again: whatever it missed may be due
    b.wake.clear()
    await a.enqueue(_message())
    await _set(b.wake)


async def test_a_write_that_rolls_back_wakes_nobody(nodes: tuple[Spool, Spool]) -> None:
    """The NOTIFY is part of the writing transaction: no commit, no wake-up.

    Notifications arrive in commit order on one connection, so once B hears
    the later commit's ``outbox_wake``, a ``wake`` from the failed write
    would have come first.
    """
    a, b = nodes
    msg = _message()
    await a.enqueue(msg)
    await _set(b.wake)
    b.wake.clear()
    with pytest.raises(SpoolError):
        await a.enqueue(msg)  # the same queue ID again: refused, rolled back
    body = '{"id": "e2", "type": "provider_state"}'
    await a.add_events(
        [OutboxEvent("http://127.0.0.1:9/hook", "e2", "provider_state", "", body, 1.0)]
    )
    await _set(b.outbox_wake)
    assert not b.wake.is_set()
