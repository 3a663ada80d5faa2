"""The store tells the truth about itself: failed writes and checkpoints show until they work.

The disk fills up for real as far as SQLite can tell: ``PRAGMA max_page_count``
set to the database's current size makes every growing write fail with
SQLITE_FULL, "database or disk is full", exactly as a full file system does.
The checkpointer's failure comes through its connection seam: real SQLite
connections that fail while the test says the disk is full.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from relay.errors import SpoolError
from relay.store.spool import NewMessage, Spool, new_queue_id
from relay.store.writer import Checkpointer, connect, write_lock_path
from tests.conftest import eventually

FULL = "database or disk is full"


def new_message(size: int = 200_000) -> NewMessage:
    now = 1_800_000_000.0
    data = b"Subject: s\r\n\r\n" + b"x" * size + b"\r\n"
    return NewMessage(new_queue_id(now), "a@example.org", ["b@example.net"], data, "s", now)


async def fill_the_disk(spool: Spool) -> None:
    """From now on the database cannot grow (SQLite's own SQLITE_FULL)."""

    def cap(c: sqlite3.Connection) -> None:
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        c.execute(f"PRAGMA max_page_count={pages}")

    await spool._writer.submit(cap)


async def free_the_disk(spool: Spool) -> None:
    await spool._writer.submit(lambda c: c.execute("PRAGMA max_page_count=1073741823"))


async def test_a_failed_write_shows_until_a_write_works_again(tmp_path: Path) -> None:
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        await spool.enqueue(new_message())
        assert not spool.health().writes.failing
        ok_at = spool.health().writes.last_ok_at
        assert ok_at is not None

        await fill_the_disk(spool)
        with pytest.raises(SpoolError, match=FULL):
            await spool.enqueue(new_message())
        writes = spool.health().writes
        assert writes.failing and writes.errors == 1
        assert writes.last_error is not None and FULL in writes.last_error
        assert writes.last_error_at is not None and writes.last_error_at >= ok_at
        # An empty commit succeeds on a full disk too: it proves nothing.
        await spool.requeue_expired_leases()
        assert spool.health().writes.failing
        with pytest.raises(SpoolError, match=FULL):
            await spool.probe_write()  # what /healthz tries while writes fail
        assert spool.health().writes.failing

        await free_the_disk(spool)
        await spool.probe_write()
        writes = spool.health().writes
        assert not writes.failing
        assert writes.last_error is not None and FULL in writes.last_error  # still told
        await spool.enqueue(new_message())


class BrokenDisk:
    """Whether the checkpointer's connections fail as on a full or broken disk."""

    def __init__(self) -> None:
        self.broken = threading.Event()
        self.connects = 0

    def connect(self, path: Path) -> sqlite3.Connection:
        self.connects += 1
        if self.broken.is_set():
            raise sqlite3.OperationalError("unable to open database file")
        conn = connect(path)
        disk = self

        class Failing(sqlite3.Connection):
            def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
                if disk.broken.is_set():
                    raise sqlite3.OperationalError(FULL)
                return conn.execute(*args, **kwargs)

        # A real connection to the same file; only this check sits in front.
        proxy = sqlite3.connect(":memory:", factory=Failing, check_same_thread=False)
        proxy.close()
        proxy.close = conn.close  # type: ignore[method-assign]
        return proxy


async def test_a_failing_checkpointer_keeps_going_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sluice.spool")
    db = tmp_path / "spool.sqlite3"
    async with await Spool.open(db) as spool:  # the schema, and a writer to fill the WAL
        disk = BrokenDisk()
        checkpointer = Checkpointer(
            db, write_lock_path(db), interval=0.005, restart_pages=4, connect=disk.connect
        )
        try:
            await spool.enqueue(new_message())
            await eventually(lambda: checkpointer.restarts >= 1)
            assert not checkpointer.health.failing

            disk.broken.set()
            await eventually(lambda: checkpointer.health.errors >= 3)
            h = checkpointer.health
            assert h.failing and h.running and checkpointer.alive
            assert h.last_error in (FULL, "unable to open database file")
            # Logged once, not once per attempt.
            failed = [r for r in caplog.records if "checkpoint failed" in r.getMessage()]
            assert len(failed) == 1

            disk.broken.clear()
            restarts = checkpointer.restarts
            await spool.enqueue(new_message())  # the WAL grows again, and is copied back
            await eventually(lambda: checkpointer.restarts > restarts)
            h = checkpointer.health
            assert not h.failing and h.running
            assert h.last_ok_at is not None and h.last_error_at is not None
            assert h.last_ok_at >= h.last_error_at
            assert disk.connects >= 2  # a new connection after the failure
            assert "spool checkpoints work again" in caplog.text
        finally:
            await checkpointer.close()
        assert not checkpointer.health.running
