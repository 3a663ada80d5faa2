"""A node's name on a shared store: one live daemon per name, taken over only from the dead.

Two Spools under one ``spool.node`` on one PostgreSQL database stand for two
daemons (pids 1 and 2). Heartbeats are short (0.1 s, gone after 1 s) and
real: what is tested is what the clock does to the rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.store.membership import Membership, NodeNameInUse
from relay.store.spool import Spool
from tests.pg import PgDatabase

BEAT, TIMEOUT = 0.1, 1.0


@pytest.fixture
async def twins(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[tuple[Spool, Spool]]:
    """Two daemons' spools, both named ``app1``."""
    a = await Spool.open(pg_db.settings(tmp_path / "a" / "spool.sqlite3", "app1"))
    b = await Spool.open(pg_db.settings(tmp_path / "b" / "spool.sqlite3", "app1"))
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def member(spool: Spool, pid: int) -> Membership:
    return Membership(spool, heartbeat=BEAT, timeout=TIMEOUT, pid=pid)


async def test_a_second_daemon_under_a_live_name_is_refused(twins: tuple[Spool, Spool]) -> None:
    a, b = twins
    first = member(a, 1)
    await first.join()
    beats = asyncio.create_task(first.run(lambda: None))
    try:
        started = time.monotonic()
        with pytest.raises(NodeNameInUse) as refused:
            await member(b, 2).join()
        assert time.monotonic() - started < TIMEOUT  # refused at its first beat seen
    finally:
        beats.cancel()
    assert "spool.node 'app1' is held by a live daemon (pid 1" in str(refused.value)


async def test_a_silent_name_is_taken_over_and_the_old_holder_told(
    twins: tuple[Spool, Spool],
) -> None:
    a, b = twins
    dead = member(a, 1)
    await dead.join()  # then never beats: killed with -9
    started = time.monotonic()
    second = member(b, 2)
    await second.join()
    assert time.monotonic() - started >= TIMEOUT * 0.8
    assert (await b.node_row()) is not None
    lost: list[bool] = []
    async with asyncio.timeout(5):
        await dead.run(lambda: lost.append(True))  # it wakes up: the name is not its own
    assert lost == [True]


async def test_a_clean_stop_gives_the_name_back_at_once(twins: tuple[Spool, Spool]) -> None:
    a, b = twins
    first = member(a, 1)
    await first.join()
    await first.leave()
    started = time.monotonic()
    await member(b, 2).join()
    assert time.monotonic() - started < TIMEOUT / 2
    row = await a.node_row()
    assert row is not None and row.pid == 2
