"""Retention: old log rows and long-finished messages are pruned; active mail never is."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.config import SpoolSettings
from relay.model import AttemptStatus, RecipientStatus
from relay.store.spool import Finish, NewMessage, Spool, new_queue_id
from tests.conftest import SluiceFactory, eventually, provider_for
from tests.upstream import TestUpstream

DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _msg(now: float, rcpt: str) -> NewMessage:
    return NewMessage(
        queue_id=new_queue_id(now),
        sender="a@example.org",
        recipients=[rcpt],
        data=b"Subject: x\r\n\r\nx\r\n",
        subject="x",
        received_at=now,
    )


async def _finish_all(spool: Spool, status: RecipientStatus) -> None:
    attempt = {
        RecipientStatus.SENT: AttemptStatus.SUCCESS,
        RecipientStatus.FAILED: AttemptStatus.FAIL,
        RecipientStatus.DEFERRED: AttemptStatus.DEFERRED,
    }[status]
    for claim in await spool.claim_due(100, lease=600):
        await spool.finish(
            Finish(
                recipient_id=rid,
                attempt_id=claim.attempt_ids[rid],
                status=status,
                attempt_status=attempt,
                next_attempt_at=None if status is not RecipientStatus.DEFERRED else 1e12,
                code=250,
                reply="ok",
                provider="p",
            )
            for rid in claim.recipients
        )


def _count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def _old_spool(path: Path | SpoolSettings, start: float) -> Clock:
    """Ten days ago: one sent, one failed, one still deferred; then one sent yesterday."""
    clock = Clock(start - 10 * DAY)
    async with await Spool.open(path, clock=clock) as spool:
        for status, rcpt in (
            (RecipientStatus.SENT, "old-sent@example.net"),
            (RecipientStatus.FAILED, "old-failed@example.net"),
            (RecipientStatus.DEFERRED, "still-trying@example.net"),
        ):
            await spool.enqueue(_msg(clock.now, rcpt))
            await _finish_all(spool, status)
        clock.now = start - 1 * DAY
        await spool.enqueue(_msg(clock.now, "recent@example.net"))
        await _finish_all(spool, RecipientStatus.SENT)
    clock.now = start
    return clock


async def test_prune_removes_old_rows_and_keeps_active_and_recent(
    spool_where: Path | SpoolSettings,
) -> None:
    path = spool_where
    clock = await _old_spool(path, 2_000_000_000.0)
    async with await Spool.open(path, clock=clock) as spool:
        removed = await spool.prune(log_retention=5 * DAY, keep_sent=7 * DAY)
        assert removed == 2  # old sent + old failed
        left = sorted(e.email for e in await spool.list_queue())
        assert left == ["recent@example.net", "still-trying@example.net"]
        # Log rows older than the retention are gone, recent ones stay.
        log = await spool.list_log()
        assert [e.email for e in log] == ["recent@example.net"]
        # Nothing more to do on a second run.
        assert await spool.prune(log_retention=5 * DAY, keep_sent=7 * DAY) == 0
    if isinstance(path, Path):  # the bodies went with their messages (a look inside SQLite)
        assert _count(path, "SELECT count(*) FROM bodies") == 2


async def test_daemon_prunes_at_start_up(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    import time

    path = tmp_path / "spool.sqlite3"
    await _old_spool(path, time.time())
    async with sluice(
        [provider_for(upstream)], log={"retention": "5d"}, spool={"keep_sent": "7d"}
    ) as s:
        await eventually(lambda: _count(path, "SELECT count(*) FROM messages") == 2)
        statuses = await s.spool.counts_by_status()
        assert statuses[RecipientStatus.DEFERRED] == 1
        assert statuses[RecipientStatus.SENT] == 1
        assert _count(path, "SELECT count(*) FROM attempts") == 1
