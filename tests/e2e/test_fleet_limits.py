"""Three ``sluice serve`` on one PostgreSQL database hold a provider's limits together.

Issue #27, "shared limits": a ``daily_limit`` of N lets exactly N through
across the three nodes, a ``rate`` holds across them (arrivals measured at a
real upstream), and a provider whose circuit opened on one node is skipped by
another. Real processes, a real cluster (``tests/pg.py``), real upstreams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from tests.conftest import eventually, fast_config, provider_for, smtp_send, write_config
from tests.daemon_proc import DaemonProcess, start_daemon
from tests.pg import PgCluster, PgDatabase
from tests.upstream import TestUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

SENDER = "app@example.org"
DAILY_LIMIT = 5
RATE, BURST = 5.0, 5  # "5/s": five at once, then one every 0.2 s


def _message(provider: str, i: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: r{i}@example.net\r\nSubject: fleet {provider} {i}\r\n"
        f"X-Sluice-Provider: {provider}\r\n\r\nbody {i}\r\n"
    ).encode()


def _node_config(tmp: Path, name: str, db: PgDatabase, providers: list[dict[str, Any]]) -> Path:
    """A node of the fleet: its own state directory, the shared database."""
    home = tmp / name
    home.mkdir(parents=True, exist_ok=True)
    cfg = fast_config(
        home,
        providers,
        spool={"path": str(home / "spool.sqlite3"), **db.config(name)},
    )
    return write_config(home / "sluice.yaml", cfg)


class Fleet:
    """The module's three nodes and their upstreams."""

    def __init__(self, db: PgDatabase, capped: TestUpstream, rated: TestUpstream) -> None:
        self.db = db
        self.capped = capped
        self.rated = rated
        self.nodes: list[DaemonProcess] = []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(
    pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    db = pg_cluster.new_database()
    capped = await TestUpstream().start()
    rated = await TestUpstream().start()
    providers = [
        provider_for(capped, "capped", daily_limit=DAILY_LIMIT),
        provider_for(rated, "rated", rate=f"{int(RATE)}/s", max_connections=4),
    ]
    f = Fleet(db, capped, rated)
    try:
        for name in ("a", "b", "c"):
            f.nodes.append(await start_daemon(_node_config(tmp, name, db, providers)))
        yield f
    finally:
        for node in f.nodes:
            await node.stop()
        await capped.stop()
        await rated.stop()


async def _settled(db: PgDatabase) -> tuple[int, int]:
    """(sent, queued for the next UTC day by the daily limit) of the "capped" mail."""

    def count() -> tuple[int, int]:
        with psycopg.connect(db.url, password=db.password) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'sent'),"
                " count(*) FILTER (WHERE status = 'queued' AND last_reply LIKE %s)"
                " FROM recipients WHERE rcpt LIKE 'r%%'",
                ("%daily limit%",),
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    return await asyncio.to_thread(count)


async def test_a_daily_limit_lets_exactly_n_through_across_three_nodes(fleet: Fleet) -> None:
    rounds = 4
    for r in range(rounds):
        # One message to each node at once, and each round settled before the next:
        # every node counts against the limit, not one node claiming everything.
        await asyncio.gather(
            *(
                smtp_send(
                    fleet.nodes[i % 3].port, SENDER, [f"r{i}@example.net"], _message("capped", i)
                )
                for i in range(3 * r, 3 * r + 3)
            )
        )

        async def round_settled(done: int = 3 * (r + 1)) -> bool:
            return sum(await _settled(fleet.db)) == done

        await eventually(round_settled, within=30, interval=0.1)
    # Every other message was put off to the next UTC day: no more will go.
    assert await _settled(fleet.db) == (DAILY_LIMIT, 3 * rounds - DAILY_LIMIT)
    assert len(fleet.capped.messages) == DAILY_LIMIT


async def test_a_rate_holds_across_three_nodes(fleet: Fleet) -> None:
    total = 20
    await asyncio.gather(
        *(
            smtp_send(fleet.nodes[i % 3].port, SENDER, [f"s{i}@example.net"], _message("rated", i))
            for i in range(total)
        )
    )
    got = await fleet.rated.wait_for(total, within=60)
    stamps = sorted(m.at for m in got)
    # Three buckets of their own would have let all twenty through at once.
    assert stamps[-1] - stamps[0] >= (total - BURST) / RATE - 0.3
    # As tests/outbound/test_limits.py: arrivals, not starts, so some slack; more of
    # it, for three daemons share two cores here (a token's send can be late, and
    # late ones bunch).
    slack = 0.3
    for i in range(len(stamps)):
        for j in range(i + 1, len(stamps)):
            allowed = BURST + RATE * (stamps[j] - stamps[i] + slack)
            assert j - i + 1 <= allowed, f"{j - i + 1} messages in {stamps[j] - stamps[i]:.2f}s"


def _closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_provider_failing_on_one_node_is_skipped_by_another(
    pg_cluster: PgCluster, tmp_path: Path
) -> None:
    db = pg_cluster.new_database()
    works, spare = await TestUpstream().start(), await TestUpstream().start()
    breaker = {"failure_threshold": 1, "cooldown": "60s"}
    dead = {"id": "flaky", "host": "127.0.0.1", "port": _closed_port(), "encryption": "none"}
    try:
        # Node x cannot reach "flaky" (its network, say): its circuit opens.
        x = await start_daemon(
            _node_config(tmp_path, "x", db, [{**dead, **breaker}, provider_for(spare, "spare")])
        )
        try:
            await smtp_send(x.port, SENDER, ["one@example.net"], _message("flaky,spare", 1))
            await x.wait_line("provider flaky skipped until", within=20)
            await spare.wait_for(1, within=20)
        finally:
            await x.stop()
        # Node y reaches it, but skips it while the fleet's block holds.
        y = await start_daemon(
            _node_config(
                tmp_path,
                "y",
                db,
                [provider_for(works, "flaky", **breaker), provider_for(spare, "spare")],
            )
        )
        try:
            await smtp_send(y.port, SENDER, ["two@example.net"], _message("flaky,spare", 2))
            await spare.wait_for(2, within=20)
        finally:
            await y.stop()
        assert works.messages == []
    finally:
        await works.stop()
        await spare.stop()
