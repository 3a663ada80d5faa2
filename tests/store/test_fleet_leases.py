"""Claims and leases across nodes: two Spools (two nodes) on one PostgreSQL database.

What the fleet's safety rests on, one rule per test: a claim skips rows
another node has locked (``FOR UPDATE SKIP LOCKED``) instead of waiting for
them; only the node holding a lease can finish or give it back; a node at
start takes back only its own leases; and another node's expired leases are
taken back only once that node stopped beating. The clock is the tests' own,
shared by both nodes, so "later" needs no sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from relay.model import AttemptStatus, Claim, RecipientStatus
from relay.store.spool import Finish, NewMessage, Spool, new_queue_id
from tests.pg import PgDatabase

LEASE = 60.0
TIMEOUT = 30.0


class Clock:
    """Both nodes' time, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def nodes(
    pg_db: PgDatabase, tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[Spool, Spool]]:
    """Two nodes, ``a`` and ``b``, on one database, each with its own state directory."""
    a = await Spool.open(pg_db.settings(tmp_path / "a" / "spool.sqlite3", "a"), clock=clock)
    b = await Spool.open(pg_db.settings(tmp_path / "b" / "spool.sqlite3", "b"), clock=clock)
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def enqueue(spool: Spool, n: int, clock: Clock) -> list[str]:
    ids = []
    for i in range(n):
        msg = NewMessage(
            queue_id=new_queue_id(clock.now + i / 1000),
            sender="app@example.org",
            recipients=[f"r{i}@example.net"],
            data=f"Subject: {i}\r\n\r\nbody\r\n".encode(),
            subject=str(i),
            received_at=clock.now,
        )
        ids.append(await spool.enqueue(msg))
    return ids


def sent(claim: Claim) -> list[Finish]:
    return [
        Finish(
            rid,
            claim.attempt_ids[rid],
            RecipientStatus.SENT,
            AttemptStatus.SUCCESS,
            None,
            250,
            "250 ok",
            "up1",
        )
        for rid in claim.recipients
    ]


async def test_claims_skip_rows_another_node_has_locked(
    nodes: tuple[Spool, Spool], pg_db: PgDatabase, clock: Clock
) -> None:
    a, _b = nodes
    first, second = await enqueue(a, 2, clock)
    # Another node's claiming transaction, caught holding the first message's row.
    with connect(pg_db) as other:
        other.execute(
            "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id "
            "WHERE m.queue_id = %s FOR UPDATE",
            (first,),
        )
        async with asyncio.timeout(5):  # waiting for the lock would hang here
            claims = await a.claim_due(1, LEASE)
        other.rollback()
    assert [c.queue_id for c in claims] == [second]
    assert [c.queue_id for c in await a.claim_due(1, LEASE)] == [first]


async def test_claims_name_the_node(
    nodes: tuple[Spool, Spool], pg_db: PgDatabase, clock: Clock
) -> None:
    a, b = nodes
    await enqueue(b, 1, clock)
    (claim,) = await a.claim_due(5, LEASE)
    rows = await asyncio.to_thread(_rows, pg_db)
    assert rows == [("b", "a", "a", "sending")]
    await a.finish(sent(claim))
    assert await asyncio.to_thread(_rows, pg_db) == [("b", None, "a", "sent")]


def connect(db: PgDatabase) -> psycopg.Connection[tuple[object, ...]]:
    """The test's own connection to the nodes' database (another node's transaction)."""
    return psycopg.connect(db.url, password=db.password)


def _rows(pg_db: PgDatabase) -> list[tuple[object, ...]]:
    with connect(pg_db) as db:
        return db.execute(
            "SELECT m.node, r.lease_node, t.node, r.status FROM messages m "
            "JOIN recipients r ON r.message_id = m.id JOIN attempts t ON t.recipient_id = r.id"
        ).fetchall()


async def test_only_the_node_holding_the_lease_finishes_or_releases_it(
    nodes: tuple[Spool, Spool], clock: Clock
) -> None:
    a, b = nodes
    await enqueue(a, 1, clock)
    (claim,) = await a.claim_due(5, LEASE)
    assert await b.finish(sent(claim)) == 0
    await b.release(claim, reply="not mine")
    detail = await a.get(claim.queue_id)
    assert [r.status for r in detail.recipients] == [RecipientStatus.SENDING]
    assert await a.finish(sent(claim)) == 1


async def test_start_up_takes_back_only_this_nodes_leases(
    nodes: tuple[Spool, Spool], clock: Clock
) -> None:
    a, b = nodes
    await enqueue(a, 2, clock)
    (mine,) = await a.claim_due(1, LEASE)
    (theirs,) = await b.claim_due(1, LEASE)
    assert await a.requeue_inflight() == 1
    assert [r.status for r in (await a.get(mine.queue_id)).recipients] == [RecipientStatus.QUEUED]
    detail = await a.get(theirs.queue_id)
    assert [r.status for r in detail.recipients] == [RecipientStatus.SENDING]
    assert [x.status for x in detail.attempts] == [AttemptStatus.IN_PROGRESS]
    assert await b.finish(sent(theirs)) == 1


async def test_another_nodes_expired_lease_waits_for_its_heartbeat_to_stop(
    nodes: tuple[Spool, Spool], clock: Clock
) -> None:
    a, b = nodes
    joined = clock.now
    assert await a.node_join(1, joined, stale_before=joined - TIMEOUT)
    await enqueue(a, 1, clock)
    (claim,) = await a.claim_due(5, LEASE)
    clock.now += LEASE + 1  # the lease ran out; a beats
    assert await a.node_beat(1, joined, clock.now)
    clock.now += 1
    assert await b.requeue_expired_leases(node_timeout=TIMEOUT) == 0  # a still beats
    clock.now += TIMEOUT + 1
    assert await b.requeue_expired_leases(node_timeout=TIMEOUT) == 1  # a went quiet
    detail = await b.get(claim.queue_id)
    assert [r.status for r in detail.recipients] == [RecipientStatus.QUEUED]
    assert [x.status for x in detail.attempts] == [AttemptStatus.DEFERRED]
    (again,) = await b.claim_due(5, LEASE)
    assert await a.finish(sent(claim)) == 0  # a woke up: the lease is b's now
    assert await b.finish(sent(again)) == 1


async def test_own_expired_lease_is_taken_back_at_once(
    nodes: tuple[Spool, Spool], clock: Clock
) -> None:
    a, _b = nodes
    assert await a.node_join(1, clock.now, stale_before=clock.now - TIMEOUT)
    await enqueue(a, 1, clock)
    await a.claim_due(5, LEASE)
    clock.now += LEASE + 1
    assert await a.requeue_expired_leases(node_timeout=TIMEOUT) == 1
