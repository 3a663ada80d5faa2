"""A spool made by an older Sluice opens, gains the new columns, and keeps its mail."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.store.spool import NewMessage, Spool, new_queue_id
from relay.store.sql import SCHEMA

_CRLF_COLUMN = ",\n    crlf_only  INTEGER NOT NULL DEFAULT 0"


def _message(data: bytes, *, crlf_only: bool) -> NewMessage:
    now = time.time()
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="a@example.com",
        recipients=["b@example.net"],
        data=data,
        subject="",
        received_at=now,
        crlf_only=crlf_only,
    )


def _version_1_spool(path: Path) -> None:
    """The schema of version 1 (bodies without crlf_only), holding one queued message."""
    assert _CRLF_COLUMN in SCHEMA
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA.replace(_CRLF_COLUMN, ""))
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO messages (id, queue_id, received_at, sender, size)"
            " VALUES (1, 'OLD', 0, 'a@example.com', 9)"
        )
        db.execute("INSERT INTO bodies VALUES (1, X'4f6c640d0a0d0a6f6b0d0a')")  # Old\r\n\r\nok\r\n
        db.execute(
            "INSERT INTO recipients (message_id, rcpt, since, next_attempt_at, updated_at)"
            " VALUES (1, 'b@example.net', 0, 0, 0)"
        )
    db.close()


async def test_a_version_1_spool_gains_crlf_only_and_its_mail_is_checked_at_delivery(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.sqlite3"
    _version_1_spool(path)
    async with await Spool.open(path) as spool:
        clean = _message(b"Subject: x\r\n\r\nclean\r\n", crlf_only=True)
        bare = _message(b"Subject: y\r\n\r\nbare\nlf\r\n", crlf_only=False)
        await spool.enqueue(clean)
        await spool.enqueue(bare)
        claims = {c.queue_id: c for c in await spool.claim_due(10, lease=60)}
    assert claims["OLD"].data == b"Old\r\n\r\nok\r\n"
    assert claims["OLD"].crlf_only is False  # not known: delivery looks again
    assert claims[clean.queue_id].crlf_only is True
    assert claims[bare.queue_id].crlf_only is False
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == ("3",)
