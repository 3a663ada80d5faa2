"""The writer commits durable work with synchronous=FULL, and only lease-like work without."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.store.writer import Checkpointer, Writer, connect, write_lock_path
from tests.conftest import eventually


def sync_level(c: sqlite3.Connection) -> int:
    return int(c.execute("PRAGMA synchronous").fetchone()[0])


async def test_only_batches_of_non_durable_jobs_skip_the_fsync(tmp_path: Path) -> None:
    writer = Writer(connect(tmp_path / "w.sqlite3"), asyncio.get_running_loop())
    try:
        assert await writer.submit(sync_level) == 2  # FULL
        assert await writer.submit(sync_level, durable=False) == 1  # NORMAL
        # A batch with any durable job in it is durable as a whole.
        levels = await asyncio.gather(
            writer.submit(sync_level, durable=False), writer.submit(sync_level)
        )
        # Whether these two share a batch is up to the thread; either way the
        # durable one is never committed without the fsync.
        assert levels[1] == 2
        assert await writer.submit(sync_level) == 2
    finally:
        await writer.close()


async def test_writers_of_several_processes_take_turns_through_the_write_lock(
    tmp_path: Path,
) -> None:
    """While another process holds the spool's write lock, nothing is committed here."""
    lock = tmp_path / "w.sqlite3-writelock"
    writer = Writer(connect(tmp_path / "w.sqlite3"), asyncio.get_running_loop(), lock_path=lock)
    other = os.open(lock, os.O_RDONLY)  # another process's descriptor: flock is per open file
    try:
        await writer.submit(lambda c: c.execute("CREATE TABLE t (x INTEGER)"))
        fcntl.flock(other, fcntl.LOCK_EX)
        first = asyncio.ensure_future(
            writer.submit(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        )
        second = asyncio.ensure_future(
            writer.submit(lambda c: c.execute("INSERT INTO t VALUES (2)"))
        )
        done, _ = await asyncio.wait([first, second], timeout=0.3)
        assert not done  # both wait for the lock
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        rows = await writer.submit(lambda c: c.execute("SELECT x FROM t ORDER BY x").fetchall())
        assert [r[0] for r in rows] == [1, 2]
    finally:
        os.close(other)
        await writer.close()


def _wal_size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def _table_writer(db: Path, lock: Path | None) -> Writer:
    """A writer of one BLOB table, whose own automatic checkpoint is off."""
    conn = connect(db)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    writer = Writer(conn, asyncio.get_running_loop(), lock_path=lock)
    await writer.submit(lambda c: c.execute("CREATE TABLE t (b BLOB)"))
    return writer


async def test_the_checkpointer_keeps_the_wal_from_growing_under_continuous_writes(
    tmp_path: Path,
) -> None:
    """Writers never pause, and their own checkpoint is off: the WAL still starts over."""
    db = tmp_path / "w.sqlite3"
    lock = write_lock_path(db)
    writer = await _table_writer(db, lock)
    checkpointer = Checkpointer(db, lock, interval=0.005, restart_pages=64)
    blob = os.urandom(64 * 1024)
    written = 0
    try:
        async with asyncio.timeout(60):
            while written < 16 * 1024 * 1024 or checkpointer.restarts < 3:
                await writer.submit(lambda c: c.execute("INSERT INTO t VALUES (?)", (blob,)))
                written += len(blob)
        rows = await writer.submit(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
        assert rows == written // len(blob)
        # Without the restarts the WAL would hold every page written. (Half, not
        # less: on a loaded machine the checkpoint thread may lag a while
        # before its first restart, and the file keeps its largest extent.)
        assert _wal_size(db) < written / 2
    finally:
        await checkpointer.close()
        await writer.close()


async def test_the_checkpointer_copies_the_wal_while_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """The bulk of the copy does not wait for the write lock, so it never holds up a writer."""
    db = tmp_path / "w.sqlite3"
    lock = write_lock_path(db)
    writer = await _table_writer(db, None)  # writes while the lock is held elsewhere
    for _ in range(32):
        await writer.submit(lambda c: c.execute("INSERT INTO t VALUES (zeroblob(65536))"))
    before = db.stat().st_size
    holder = os.open(lock, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    checkpointer = Checkpointer(db, lock, interval=0.005)
    try:
        await eventually(lambda: db.stat().st_size >= before + 32 * 65536, within=30)
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        await checkpointer.close()
        await writer.close()


def _insert(x: int) -> Callable[[sqlite3.Connection], int]:
    return lambda c: c.execute("INSERT INTO t VALUES (?)", (x,)).rowcount


def _insert_then_raise(x: int, exc: Exception) -> Callable[[sqlite3.Connection], int]:
    def job(c: sqlite3.Connection) -> int:
        c.execute("INSERT INTO t VALUES (?)", (x,))
        raise exc

    return job


async def test_a_failing_job_is_undone_alone_in_a_batch_or_by_itself(tmp_path: Path) -> None:
    """Its caller hears why; what it wrote is gone; the others' work is committed."""
    db = tmp_path / "w.sqlite3"
    lock = write_lock_path(db)
    writer = Writer(connect(db), asyncio.get_running_loop(), lock_path=lock)
    other = os.open(lock, os.O_RDONLY)
    try:
        await writer.submit(lambda c: c.execute("CREATE TABLE t (x INTEGER UNIQUE)"))
        # By itself (each awaited before the next): its transaction is rolled back.
        assert await writer.submit(_insert(1)) == 1
        with pytest.raises(SpoolError, match="UNIQUE"):
            await writer.submit(_insert(1))
        with pytest.raises(ValueError, match="refused"):
            await writer.submit(_insert_then_raise(2, ValueError("refused")))
        # In one batch: the lock is held elsewhere while all four queue up.
        fcntl.flock(other, fcntl.LOCK_EX)
        jobs = [_insert(3), _insert_then_raise(4, ValueError("no")), _insert(1), _insert(5)]
        pending = [asyncio.ensure_future(writer.submit(job)) for job in jobs]
        await asyncio.sleep(0)  # every submit has queued its job (no time passes)
        fcntl.flock(other, fcntl.LOCK_UN)
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert results[0] == 1 and results[3] == 1
        assert isinstance(results[1], ValueError)
        assert isinstance(results[2], SpoolError)
        rows = await writer.submit(lambda c: c.execute("SELECT x FROM t ORDER BY x").fetchall())
        assert [r[0] for r in rows] == [1, 3, 5]
        # Nothing is left open: the next job by itself commits as usual.
        assert await writer.submit(_insert(6)) == 1
    finally:
        os.close(other)
        await writer.close()
