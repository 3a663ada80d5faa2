"""Work one node may do at a time (#27): turns held by one node of a fleet, taken over when it dies.

Two ``Spool`` objects on one PostgreSQL database are two nodes (each has its
own sessions, as two processes would). A node "dies" the way the server sees
it: its session is ended from outside (``pg_terminate_backend``), or it
closes. On SQLite every turn is the daemon's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.store.pg.open import target_of
from relay.store.pg.turns import PgTurns
from relay.store.singleton import lock_key, one_node_at_a_time
from relay.store.spool import Spool
from tests.conftest import eventually
from tests.pg import PgCluster, PgDatabase


async def _node(db: PgDatabase, tmp_path: Path, name: str) -> Spool:
    return await Spool.open(db.settings(tmp_path / name / "spool.sqlite3", node=name))


@pytest.fixture
async def nodes(pg_db: PgDatabase, tmp_path: Path) -> AsyncIterator[tuple[Spool, Spool]]:
    a = await _node(pg_db, tmp_path, "node-a")
    b = await _node(pg_db, tmp_path, "node-b")
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


def _sessions(cluster: PgCluster, db: PgDatabase, application: str) -> int:
    return int(
        cluster.psql(
            "SELECT count(*) FROM pg_stat_activity "
            f"WHERE datname = '{db.name}' AND application_name = '{application}'"
        )
    )


def _end_sessions(cluster: PgCluster, db: PgDatabase, application: str) -> None:
    """End the sessions of one node's role from outside, as the server does for a dead peer."""
    out = cluster.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE datname = '{db.name}' AND application_name = '{application}'"
    )
    assert out == "1", out


async def test_a_sqlite_spool_grants_every_turn(tmp_path: Path) -> None:
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        assert not spool.shared
        async with spool.singleton("bounces") as turn, spool.singleton("prune") as other:
            assert turn and other


def test_a_turns_key_is_the_same_everywhere_and_differs_by_name() -> None:
    assert lock_key("bounces") == lock_key("bounces")
    assert lock_key("bounces") != lock_key("prune")
    assert -(2**63) <= lock_key("webhooks http://x/hook") < 2**63


async def test_one_node_holds_a_turn_at_a_time(nodes: tuple[Spool, Spool]) -> None:
    a, b = nodes
    async with a.singleton("bounces") as mine:
        assert mine
        async with b.singleton("bounces") as theirs:
            assert not theirs and not theirs.error  # held elsewhere, not a failure
        async with a.singleton("bounces") as again:
            assert not again  # and once within a process
        async with b.singleton("prune") as other:
            assert other  # turns are by name
    async with b.singleton("bounces") as theirs:
        assert theirs  # given back at the end of A's block


async def test_a_dead_holders_turn_goes_to_another_node(
    pg_cluster: PgCluster, pg_db: PgDatabase, tmp_path: Path
) -> None:
    target = await asyncio.to_thread(target_of, pg_db.settings(tmp_path / "a.db", "node-a"), "a")
    a = PgTurns(target, check_every=0.1)
    b_spool = await _node(pg_db, tmp_path, "node-b")
    try:
        async with a.hold("bounces") as mine:
            assert mine
            async with b_spool.singleton("bounces") as theirs:
                assert not theirs
            _end_sessions(pg_cluster, pg_db, "sluice turns a")
            # The holder learns it lost the turn (its watch) ...
            async with asyncio.timeout(10):
                await mine.lost.wait()
            assert not mine

            # ... and the other node takes it at its next try.
            async def taken() -> bool:
                async with b_spool.singleton("bounces") as theirs:
                    return bool(theirs)

            await eventually(taken, within=10, interval=0.1)
    finally:
        await a.aclose()
        await b_spool.aclose()


async def test_closing_a_node_gives_its_turns_back(
    pg_db: PgDatabase, tmp_path: Path, nodes: tuple[Spool, Spool]
) -> None:
    a, _b = nodes
    c = await _node(pg_db, tmp_path, "node-c")
    async with c.singleton("prune") as held:
        assert held
        async with a.singleton("prune") as theirs:
            assert not theirs
        await c.aclose()
        async with a.singleton("prune") as theirs:
            assert theirs


async def test_the_work_moves_to_another_node_when_its_holder_dies(
    pg_cluster: PgCluster, pg_db: PgDatabase, nodes: tuple[Spool, Spool]
) -> None:
    """``one_node_at_a_time``: one node works, the other stands by and takes over."""
    a, b = nodes
    stop = asyncio.Event()
    working: list[str] = []
    log: list[str] = []

    def work_of(node: str) -> Callable[[asyncio.Event], Awaitable[None]]:
        async def work(until: asyncio.Event) -> None:
            working.append(node)
            log.append(f"{node} starts")
            try:
                await until.wait()
            finally:
                working.remove(node)
                log.append(f"{node} stops")

        return work

    async def run(spool: Spool, node: str) -> None:
        await one_node_at_a_time(spool, "bounces", stop, work_of(node), what="works", retry=0.1)

    task_a = asyncio.create_task(run(a, "a"))
    await eventually(lambda: working == ["a"], within=10, interval=0.02)
    task_b = asyncio.create_task(run(b, "b"))
    try:
        # B stands by: it asks (its turns' session exists) and is refused while A works.
        await eventually(lambda: _sessions(pg_cluster, pg_db, "sluice turns node-b") == 1)
        assert working == ["a"]
        _end_sessions(pg_cluster, pg_db, "sluice turns node-a")
        await eventually(lambda: working == ["b"], within=20, interval=0.05)
        assert log == ["a starts", "a stops", "b starts"] or log == [
            "a starts",
            "b starts",
            "a stops",
        ], log
    finally:
        stop.set()
        await asyncio.gather(task_a, task_b)
    assert working == []
