"""A body committed after another reader statement started is still found.

The spool's reader connection is shared by every coroutine; a statement left
open between two aiosqlite hops keeps an old WAL snapshot alive. The scheduler
must still find the body of a message it has just claimed.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiosqlite

from relay.store.queue import BLOB_IO_FROM
from relay.store.spool import NewMessage, Spool, new_queue_id


def _message(n: int) -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="a@example.com",
        recipients=["b@example.net"],
        data=b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n),
        subject=str(n),
        received_at=now,
    )


async def test_body_of_a_message_committed_during_an_open_read(tmp_path: Path) -> None:
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        for n in range(3):
            await spool.enqueue(_message(n))
        # Another reader (e.g. an admin page) is half-way through a result set.
        reader = spool._reader
        assert isinstance(reader, aiosqlite.Connection)  # SQLite's snapshots are the point
        open_cursor = await reader.execute("SELECT id FROM messages")
        assert await open_cursor.fetchone() is not None
        late = _message(99)
        await spool.enqueue(late)
        claims = await spool.claim_due(10, lease=60)
        claim = next(c for c in claims if c.queue_id == late.queue_id)
        assert await spool.body(claim.message_id) == late.data
        await open_cursor.close()


async def test_large_bodies_go_through_a_blob_handle_byte_for_byte(tmp_path: Path) -> None:
    """Bodies from ``BLOB_IO_FROM`` on are written and read in place, the same bytes either way."""
    now = time.time()
    small = b"Subject: small\r\n\r\n" + bytes(range(256)) * 64 + b"\r\n"
    large = b"Subject: large\r\n\r\n" + bytes(range(256)) * (BLOB_IO_FROM // 256) + b"bare\n"
    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        sent = {}
        for data, crlf_only in ((small, True), (large, False), (large[:BLOB_IO_FROM], False)):
            qid = new_queue_id(now)
            sent[qid] = (data, crlf_only)
            await spool.enqueue(
                NewMessage(
                    qid, "a@example.com", ["b@example.net"], data, "s", now, crlf_only=crlf_only
                )
            )
        claims = await spool.claim_due(10, lease=60)
        assert {c.queue_id: (c.data, c.crlf_only) for c in claims} == sent
        for c in claims:
            assert await spool.body(c.message_id) == sent[c.queue_id][0]
