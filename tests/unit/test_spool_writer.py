"""The writer commits durable work with synchronous=FULL, and only lease-like work without."""

from __future__ import annotations

import asyncio
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
