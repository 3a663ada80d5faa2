"""Sluice on the PostgreSQL store (#27): mail in, through a real upstream, logged.

The same daemon as on SQLite, on a private PostgreSQL cluster (tests/pg.py):
what the store is for must not depend on which one it is.
"""

from __future__ import annotations

from pathlib import Path

from relay.model import AttemptStatus, RecipientStatus
from tests.conftest import SluiceFactory, provider_for, smtp_send
from tests.pg import PgDatabase
from tests.upstream import TestUpstream


async def test_mail_is_relayed_and_logged_on_postgresql(
    sluice: SluiceFactory, upstream: TestUpstream, pg_db: PgDatabase, tmp_path: Path
) -> None:
    spool = {"path": str(tmp_path / "state" / "spool.sqlite3"), **pg_db.config("node-a")}
    async with sluice([provider_for(upstream)], spool=spool) as s:
        assert s.spool.backend == "postgresql" and s.spool.node == "node-a"
        data = b"Subject: on pg\r\n\r\nbytes \xe2\x9c\x93 kept\r\n"
        refused, reply = await smtp_send(s.port, "app@example.com", ["a@example.net"], data)
        assert refused == {} and reply.startswith("2")
        await upstream.wait_for(1)
        await s.wait_idle()
        assert upstream.messages[0].data.endswith(data)
        counts = await s.spool.counts_by_status()
        assert counts[RecipientStatus.SENT] == 1
        log = await s.spool.list_log()
        assert [e.status for e in log] == [AttemptStatus.SUCCESS]
    assert not (tmp_path / "state" / "spool.sqlite3").exists()  # no SQLite file was made
