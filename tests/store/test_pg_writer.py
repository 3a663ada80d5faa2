"""The PostgreSQL writer's group commit: one batch, each job alone, few round trips.

Jobs queued while a transaction is being written share the next one, each in
its own SAVEPOINT: a job that fails (a refused statement, or an exception of
its own) is undone alone and its caller told, the others commit. The
transaction's own statements cost round trips of the one writer thread, the
store's bottleneck (bench/RESULTS.md), so they travel together: a batch of
*n* jobs costs *n* + 1 of them. Counted here on a real connection.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest

from relay.errors import SpoolError
from relay.store.pg.conn import PgConn, PgRow, row_factory
from relay.store.pg.connect import Target
from relay.store.pg.migrations import migrate
from relay.store.pg.writer import PgWriter
from relay.store.sql import QUERIES
from tests.pg import PgDatabase

_CONTROL = ("BEGIN", "SAVEPOINT", "RELEASE", "ROLLBACK", "COMMIT", "SET LOCAL")


class _Counting(psycopg.Connection[PgRow]):
    """A real connection that notes every statement it is handed (each a round trip)."""

    sent: list[str]

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        self.sent.append(query if isinstance(query, str) else str(query))
        return super().execute(query, params, **kwargs)


def _set(key: str) -> Any:
    def job(c: PgConn) -> None:
        c.execute(QUERIES["meta_set"], {"key": key, "value": "v"})

    return job


def _refused(key: str) -> Any:
    """Writes, then has a statement refused (the same key twice in one INSERT)."""

    def job(c: PgConn) -> None:
        c.execute(QUERIES["meta_set"], {"key": key, "value": "v"})
        c.raw.execute("INSERT INTO meta (key, value) VALUES ('twice', 'a'), ('twice', 'b')")

    return job


def _raises(key: str) -> Any:
    """Writes, then fails in Python."""

    def job(c: PgConn) -> None:
        c.execute(QUERIES["meta_set"], {"key": key, "value": "v"})
        raise ValueError("the job's own mistake")

    return job


@pytest.fixture
async def writer(pg_db: PgDatabase) -> Any:
    conn = _Counting.connect(
        pg_db.url, password=pg_db.password, autocommit=True, row_factory=row_factory
    )
    conn.sent = []
    migrate(conn)
    target = Target(pg_db.url, password=pg_db.password, node="test-node")
    w = PgWriter(conn, target, asyncio.get_running_loop())
    yield w, conn
    await w.close()


async def _one_batch(w: PgWriter, jobs: list[Any]) -> list[Any]:
    """Run ``jobs`` as one batch: queued while a first job holds the writer thread."""
    inside, go = threading.Event(), threading.Event()

    def hold(_c: PgConn) -> None:
        inside.set()
        go.wait(30)

    first = asyncio.ensure_future(w.submit(hold))
    assert await asyncio.to_thread(inside.wait, 30)
    rest = [asyncio.ensure_future(w.submit(job)) for job in jobs]
    await asyncio.sleep(0)  # every submit has queued its job
    go.set()
    await first
    return await asyncio.gather(*rest, return_exceptions=True)


async def test_a_failing_job_is_undone_alone_and_the_batch_commits(writer: Any) -> None:
    w, conn = writer
    conn.sent.clear()
    results = await _one_batch(w, [_set("a"), _refused("b"), _set("c"), _raises("d")])
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], SpoolError) and "unique" in str(results[1]).lower()
    assert isinstance(results[3], ValueError)
    rows = conn.execute("SELECT key FROM meta WHERE key IN ('a', 'b', 'c', 'd', 'twice')")
    assert sorted(r[0] for r in rows) == ["a", "c"]
    # The writer goes on: the next job commits.
    await w.submit(_set("e"))
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'e'").fetchone()[0] == 1


async def test_a_batch_of_n_jobs_costs_n_plus_one_round_trips_of_its_own(writer: Any) -> None:
    w, conn = writer
    await w.submit(_set("warm"))
    conn.sent.clear()
    await _one_batch(w, [_set(f"k{i}") for i in range(5)] + [_refused("x")])
    control = [s for s in conn.sent if s.startswith(_CONTROL)]
    # The holding job's batch: BEGIN, COMMIT. Then six jobs: six SAVEPOINTs, each with what
    # came before it (BEGIN, or the last job's RELEASE), and the COMMIT with the last RELEASE
    # (and the ROLLBACK TO of the refused job).
    assert control[:2] == ["BEGIN", "COMMIT"], control
    assert control[2:] == [
        "BEGIN; SAVEPOINT job",
        *["RELEASE SAVEPOINT job; SAVEPOINT job"] * 5,
        "ROLLBACK TO SAVEPOINT job; RELEASE SAVEPOINT job; COMMIT",
    ], control
    rows = conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone()
    assert rows[0] == 5


async def test_a_job_alone_needs_no_savepoint(writer: Any) -> None:
    w, conn = writer
    conn.sent.clear()
    await w.submit(_set("alone"))
    with pytest.raises(ValueError, match="own mistake"):
        await w.submit(_raises("undone"))
    control = [s for s in conn.sent if s.startswith(_CONTROL)]
    assert control == ["BEGIN", "COMMIT", "BEGIN", "ROLLBACK"]
    keys = [r[0] for r in conn.execute("SELECT key FROM meta WHERE key IN ('alone', 'undone')")]
    assert keys == ["alone"]


async def test_a_batch_the_server_aborts_for_a_deadlock_runs_again(
    pg_db: PgDatabase, tmp_path: Any
) -> None:
    """Two nodes writing the same rows in opposite orders: both callers get their commit.

    PostgreSQL breaks the deadlock by aborting one transaction (40P01); its
    batch did nothing, so the writer runs it again instead of failing it.
    """
    import time

    from relay.store.spool import Spool
    from relay.store.state import meta_set

    a = await Spool.open(pg_db.settings(tmp_path / "a" / "s", node="a"))
    b = await Spool.open(pg_db.settings(tmp_path / "b" / "s", node="b"))
    both = threading.Barrier(2, timeout=10)

    runs: list[str] = []

    def crossing(first: str, second: str, value: str) -> Any:
        def job(c: Any) -> None:
            meta_set(c, {first: value})
            if value not in runs:  # the first run: each holds its first row, wants the other's
                runs.append(value)
                both.wait()
                time.sleep(0.05)
            else:
                runs.append(value)
            meta_set(c, {second: value})

        return job

    try:
        await asyncio.wait_for(
            asyncio.gather(
                a._writer.submit(crossing("x", "y", "a")),
                b._writer.submit(crossing("y", "x", "b")),
            ),
            timeout=30,
        )
        x, y = await a.meta_get("x"), await a.meta_get("y")
        assert x == y and x in ("a", "b")  # one ran whole after the other
        assert len(runs) == 3  # the aborted batch ran again, once
    finally:
        await a.aclose()
        await b.aclose()
