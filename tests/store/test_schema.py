"""A spool made by an older Sluice opens, gains the new columns, and keeps its mail.

(tests/store/test_migrations.py opens a spool of every earlier version.)
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from relay.model import AttemptStatus
from relay.store.migrations import SCHEMA_VERSION, migrate
from relay.store.spool import NewMessage, Spool, new_queue_id


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
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=1)
    assert "crlf_only" not in {row[1] for row in db.execute("PRAGMA table_info(bodies)")}
    with db:
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
    assert version == (str(SCHEMA_VERSION),)


async def test_an_older_spools_log_statuses_become_lower_case(tmp_path: Path) -> None:
    """Version 3: the delivery log's IN PROGRESS / SUCCESS / FAIL rows read as values."""
    path = tmp_path / "spool.sqlite3"
    _version_1_spool(path)
    with sqlite3.connect(path) as db:
        for i, status in enumerate(["IN PROGRESS", "SUCCESS", "FAIL", "deferred"], start=1):
            db.execute(
                "INSERT INTO attempts (id, recipient_id, message_id, queue_id, rcpt, started_at,"
                " status) VALUES (?, 1, 1, 'OLD', 'b@example.net', ?, ?)",
                (i, float(i), status),
            )
    db.close()
    async with await Spool.open(path) as spool:
        log = await spool.list_log()
    assert [e.status for e in reversed(log)] == [
        AttemptStatus.IN_PROGRESS,
        AttemptStatus.SUCCESS,
        AttemptStatus.FAIL,
        AttemptStatus.DEFERRED,
    ]
    assert [e.status.label for e in reversed(log)] == ["IN PROGRESS", "SUCCESS", "FAIL", "DEFERRED"]
    assert AttemptStatus.parse("in progress") is AttemptStatus.IN_PROGRESS
    assert AttemptStatus.parse("FAIL") is AttemptStatus.FAIL
    assert AttemptStatus.parse("nonsense") is None
