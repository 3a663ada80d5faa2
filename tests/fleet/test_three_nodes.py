"""Three ``sluice serve`` processes on one PostgreSQL spool; one is killed with -9 mid-run.

Each node delivers through its own real upstream (``tests/upstream.py``), so
what arrives where says which node sent it. The first node's upstream keeps
every message it is given but holds its ``250``: that node's deliveries are
in flight when it is killed, the case the issue asks about. Then:

- every accepted message arrives, none twice from live nodes (the second and
  third), and duplicates are at most what the killed node had in flight;
- the killed node's leased recipients are delivered by the others, after
  its lease (``delivery.lease``), and its attempts are closed in the log;
- the killed node, restarted while the others have deliveries in flight, takes
  back only its own leases (none of theirs is sent twice);
- a fourth daemon under a live node's name is refused at start, in one line;
- a node stopped cleanly gives its name back.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import psycopg
import pytest

from tests.conftest import fast_config, provider_for, write_config
from tests.daemon_proc import DaemonProcess, start_daemon
from tests.pg import PgDatabase
from tests.upstream import Received, TestUpstream

TOKEN = re.compile(rb"X-Test-Token: (\d+)")
#: messages sent to each node before the kill, and to each live node after it
BEFORE, AFTER = 12, 8
LEASE = 10.0
NODES = ("n1", "n2", "n3")


def node_config(
    tmp_path: Path, db: PgDatabase, node: str, up: TestUpstream, home: str = ""
) -> Path:
    """A node's config: the shared spool, its own state directory, short lease and heartbeat."""
    home_dir = tmp_path / (home or node)
    home_dir.mkdir()
    cfg: dict[str, Any] = fast_config(
        home_dir,
        [provider_for(up)],
        spool={
            "path": str(home_dir / "spool.sqlite3"),
            **db.config(node),
            "heartbeat": "0.3s",
            "node_timeout": "1.5s",
        },
        delivery={"lease": f"{LEASE}s", "max_concurrent": 4, "data_timeout": "9s"},
    )
    return write_config(home_dir / "sluice.yaml", cfg)


async def send(port: int, tokens: range) -> list[int]:
    """Send one message per token over two sessions; the tokens answered 250."""
    accepted: list[int] = []
    todo = list(tokens)

    async def session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
            while todo:
                i = todo.pop()
                data = f"Subject: fleet {i}\r\nX-Test-Token: {i}\r\n\r\nbody {i}\r\n".encode()
                _refused, reply = await client.sendmail("app@example.org", ["a@example.net"], data)
                assert "queued as" in reply
                accepted.append(i)

    await asyncio.gather(session(), session())
    return accepted


def tokens_of(messages: list[Received]) -> list[int]:
    found = []
    for m in messages:
        match = TOKEN.search(m.data)
        assert match, m.data[:200]
        found.append(int(match.group(1)))
    return found


def query(db: PgDatabase, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """One read of the shared spool, as an operator's psql would."""
    with psycopg.connect(db.url, password=db.password, autocommit=True) as conn:
        return conn.execute(sql, params or {}).fetchall()


async def wait_until(what: str, check: Any, within: float) -> None:
    """Poll ``check()`` (a coroutine function) until true, failing after ``within`` s."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.1)


async def test_three_nodes_one_killed(pg_db: PgDatabase, tmp_path: Path) -> None:
    gate, held = asyncio.Event(), asyncio.Event()
    ups = [await TestUpstream().start() for _ in NODES]

    async def hold(_msg: Received) -> None:
        await gate.wait()  # kept (counted as arrived), its 250 held back

    ups[0].on_data = hold
    daemons: list[DaemonProcess] = []
    try:
        configs = [node_config(tmp_path, pg_db, n, up) for n, up in zip(NODES, ups, strict=True)]
        daemons = list(await asyncio.gather(*(start_daemon(c) for c in configs)))
        n1, n2, n3 = daemons

        # Mail to all three; the first node's deliveries hang at its upstream's 250.
        batches = await asyncio.gather(
            *(send(d.port, range(k * BEFORE, (k + 1) * BEFORE)) for k, d in enumerate(daemons))
        )
        accepted = [t for batch in batches for t in batch]

        async def n1_in_flight() -> bool:
            return len(ups[0].messages) >= 2

        await wait_until("the first node has deliveries in flight", n1_in_flight, 15)
        n1.kill_group()
        assert await n1.wait() == -signal.SIGKILL
        killed_at = time.time()
        leased = await asyncio.to_thread(
            query,
            pg_db,
            "SELECT id, lease_until FROM recipients WHERE status = 'sending' AND lease_node = 'n1'",
        )
        in_flight = len(ups[0].messages)
        gate.set()
        assert leased, "the killed node held no lease"

        # Mid-run: more mail to the live nodes.
        more = await asyncio.gather(
            send(n2.port, range(100, 100 + AFTER)), send(n3.port, range(200, 200 + AFTER))
        )
        accepted += [t for batch in more for t in batch]

        async def all_sent() -> bool:
            rows = await asyncio.to_thread(
                query, pg_db, "SELECT count(*) FROM recipients WHERE status != 'sent'"
            )
            return bool(rows[0][0] == 0)

        await wait_until("every recipient sent", all_sent, 25)

        # Nothing lost; nothing twice from the live nodes; duplicates only what n1 had in flight.
        live = tokens_of(ups[1].messages) + tokens_of(ups[2].messages)
        everywhere = live + tokens_of(ups[0].messages)
        assert set(everywhere) == set(accepted)
        assert len(live) == len(set(live)), "a message was delivered twice by live nodes"
        assert len(everywhere) - len(set(everywhere)) <= in_flight

        # n1's leases went to the others once its lease had run out; its log rows are closed.
        for rid, lease_until in leased:
            rows = await asyncio.to_thread(
                query,
                pg_db,
                "SELECT node, started_at, status FROM attempts WHERE recipient_id = %(rid)s "
                "ORDER BY id",
                {"rid": rid},
            )
            assert rows[0][0] == "n1" and rows[0][2] == "deferred", rows
            assert rows[-1][0] in ("n2", "n3") and rows[-1][2] == "success", rows
            assert rows[-1][1] >= lease_until, (rows, lease_until)
        assert not await asyncio.to_thread(
            query, pg_db, "SELECT id FROM attempts WHERE status = 'in_progress'"
        )
        print(
            f"{len(accepted)} accepted, {len(leased)} leased by the killed node, "
            f"{len(everywhere) - len(set(everywhere))} duplicates, last lease "
            f"{max(lu for _, lu in leased) - killed_at:+.1f}s after the kill"
        )

        # n1 restarts while the live nodes have deliveries in flight: it takes back its
        # own leases only; theirs stay theirs (their log rows still in progress).

        async def hold_live(_msg: Received) -> None:
            await held.wait()

        ups[1].on_data = ups[2].on_data = hold_live
        before = len(ups[1].messages) + len(ups[2].messages)
        accepted += await send(n2.port, range(300, 302))

        async def live_in_flight() -> bool:
            return len(ups[1].messages) + len(ups[2].messages) > before

        await wait_until("a live node has a delivery in flight", live_in_flight, 15)
        flying = await asyncio.to_thread(
            query, pg_db, "SELECT id, lease_node FROM recipients WHERE status = 'sending'"
        )
        restarting = time.monotonic()
        daemons.append(n1_again := await start_daemon(configs[0]))
        restart = time.monotonic() - restarting
        assert (
            await asyncio.to_thread(
                query, pg_db, "SELECT id, lease_node FROM recipients WHERE status = 'sending'"
            )
            == flying
        )
        assert {r[0] for r in flying} <= {
            r[0]
            for r in await asyncio.to_thread(
                query, pg_db, "SELECT recipient_id FROM attempts WHERE status = 'in_progress'"
            )
        }
        held.set()
        await wait_until("every recipient sent", all_sent, 25)
        for up in ups:
            up.on_data = None
        late = [t for up in ups for t in tokens_of(up.messages) if t >= 300]
        assert sorted(late) == [300, 301], "a message in flight at a live node was sent again"
        assert "node n1 joined the fleet" in n1_again.output
        print(f"n1 restarted in {restart:.1f}s beside deliveries in flight")

        # A daemon under a live node's name is refused at start, with one clear line.
        clash = DaemonProcess(node_config(tmp_path, pg_db, "n2", ups[1], home="clash"))
        await clash.start(wait_listening=False)
        assert await clash.wait(within=20) == 75  # EX_TEMPFAIL, as for a spool in use
        assert "spool.node 'n2' is held by a live daemon" in clash.output, clash.output
        assert "Traceback" not in clash.output

        # The live nodes beat; one stopped cleanly gives its name back (a beat at 0).
        assert await n3.stop() == 0
        beats = dict(await asyncio.to_thread(query, pg_db, "SELECT name, heartbeat_at FROM nodes"))
        assert beats["n3"] == 0
        assert time.time() - beats["n2"] < 2 and time.time() - beats["n1"] < 2
    finally:
        gate.set()
        held.set()
        for d in daemons:
            if d.proc is not None and d.proc.returncode is None:
                d.send_signal(signal.SIGTERM)
        for d in daemons:
            await d.kill()
        for up in ups:
            await up.stop()


async def test_a_node_whose_name_was_taken_over_stops(pg_db: PgDatabase, tmp_path: Path) -> None:
    """A node whose name another daemon took (its beat was late past spool.node_timeout) stops.

    Its leases now look like the other's, so it must not go on: it logs why and stops.
    """
    up = await TestUpstream().start()
    daemon = await start_daemon(node_config(tmp_path, pg_db, "n1", up))
    try:
        # What a namesake's start does once this node's row looked stale.
        await asyncio.to_thread(
            query,
            pg_db,
            "UPDATE nodes SET pid = 999999, started_at = 1, heartbeat_at = %(now)s "
            "WHERE name = 'n1' RETURNING name",
            {"now": time.time()},
        )
        await daemon.wait_line("spool.node n1 was taken over by another daemon (pid 999999)")
        assert await daemon.wait(within=20) == 0
        rows = await asyncio.to_thread(query, pg_db, "SELECT pid FROM nodes WHERE name = 'n1'")
        assert rows == [(999999,)]  # its clean stop left the other's row alone
    finally:
        await daemon.kill()
        await up.stop()


pytestmark = pytest.mark.timeout(90)
