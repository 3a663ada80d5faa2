"""The writer commits durable work with synchronous=FULL, and only lease-like work without."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from pathlib import Path

from relay.spool_writer import Writer, connect


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
