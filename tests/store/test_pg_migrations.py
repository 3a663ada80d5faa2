"""Numbered migrations on a real PostgreSQL store: earlier versions upgrade with their rows.

As ``tests/store/test_migrations.py`` does for SQLite. A store of an earlier
version is made by applying steps 1..k (what a Sluice of that version made),
filled with rows that version allows, and opened by ``Spool.open``, which
must bring it to the current version with the rows intact.

The PostgreSQL store has one version so far, so the upgrade is also shown
with a step of the tests' own (``_NEXT``), written the way the next real one
will be (a column added and filled from the rows, a status word added to a
CHECK, an index): the runner applies it to a store of version 1 full of
mail, keeps every row, and the identity columns go on from where they were.
When a real step 0002 lands, ``test_a_store_of_every_earlier_version_opens``
runs for version 1 by itself.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from relay.errors import SpoolError
from relay.model import AttemptStatus, RecipientStatus, Selection
from relay.store.pg.conn import PgRow, row_factory
from relay.store.pg.migrations import (
    PG_MIGRATIONS,
    PG_SCHEMA_VERSION,
    PgMigration,
    migrate,
    schema_version,
)
from relay.store.spool import NewMessage, Spool
from relay.store.sql import SCHEMA
from tests.pg import PgDatabase

#: a step after the last real one, as a later Sluice would write it
_NEXT = PgMigration(
    PG_SCHEMA_VERSION + 1,
    "fixture_rcpt_domain",
    """
    ALTER TABLE recipients ADD COLUMN rcpt_domain text;
    UPDATE recipients SET rcpt_domain = lower(split_part(rcpt, '@', 2));
    ALTER TABLE recipients ALTER COLUMN rcpt_domain SET NOT NULL;
    CREATE INDEX recipients_domain ON recipients(rcpt_domain, id);
    ALTER TABLE recipients DROP CONSTRAINT recipients_status_check;
    ALTER TABLE recipients ADD CONSTRAINT recipients_status_check CHECK (status IN
        ('queued', 'sending', 'deferred', 'sent', 'failed', 'expired', 'suppressed', 'held',
         'quarantined'));
    """,
)


@contextmanager
def _connect(db: PgDatabase) -> Iterator[psycopg.Connection[PgRow]]:
    with psycopg.connect(
        db.url, password=db.password, autocommit=True, row_factory=row_factory
    ) as conn:
        yield conn


def _fill(conn: psycopg.Connection[PgRow]) -> None:
    """Mail as a Sluice of version 1 left it: two messages, their recipients, log, controls.

    Rows only in the columns of version 1, so that they fit every later one
    (a later step adds columns with defaults or fills them, as ``_NEXT`` does).
    Ids come from the identity columns, as Sluice's own inserts take them.
    """
    with conn.transaction():
        ids = [
            conn.execute(
                "INSERT INTO messages (queue_id, received_at, sender, subject, size, stream, node)"
                " VALUES (%s, %s, 'a@example.com', %s, 13, %s, 'node-a') RETURNING id",
                (qid, at, subject, stream),
            ).fetchone()[0]  # type: ignore[index]
            for qid, at, subject, stream in (("OLD1", 10, "one", ""), ("OLD2", 20, "two", "news"))
        ]
        conn.execute(
            "INSERT INTO bodies (message_id, data, crlf_only)"
            " VALUES (%s, %s, false), (%s, %s, true)",
            (ids[0], b"x", ids[1], b"y"),
        )
        due = conn.execute(
            "INSERT INTO recipients (message_id, rcpt, status, attempts, since, next_attempt_at,"
            " updated_at) VALUES (%s, 'due@Example.NET', 'deferred', 1, 10, 0, 10) RETURNING id",
            (ids[0],),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO recipients (message_id, rcpt, status, attempts, since, next_attempt_at,"
            " updated_at, held_at) VALUES (%s, 'sent@example.net', 'sent', 1, 10, NULL, 10, NULL),"
            " (%s, 'waits@example.net', 'held', 0, 20, 9e9, 20, 15)",
            (ids[0], ids[1]),
        )
        for i, status in enumerate(("in_progress", "success", "fail", "deferred"), start=1):
            conn.execute(
                "INSERT INTO attempts (recipient_id, message_id, queue_id, rcpt, started_at,"
                " status, node) VALUES (%s, %s, 'OLD1', 'due@Example.NET', %s, %s, 'node-a')",
                (due, ids[0], float(i), status),
            )
        conn.execute(
            "INSERT INTO suppressions (address, scope, source, created_at)"
            " VALUES ('gone@example.net', '', 'manual', 5)"
        )
        conn.execute(
            "INSERT INTO audit (at, actor, action, target, count)"
            " VALUES (15, 'cli:root', 'hold', 'stream=news', 1)"
        )


def _counts(conn: psycopg.Connection[PgRow]) -> dict[str, int]:
    tables = ("messages", "bodies", "recipients", "attempts", "suppressions", "audit")
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


@pytest.mark.parametrize("version", range(1, PG_SCHEMA_VERSION + 1))
async def test_a_store_of_every_earlier_version_opens_with_its_rows(
    pg_db: PgDatabase, tmp_path: Path, version: int
) -> None:
    """Made at ``version`` (the last one too: the first version's rows on today's code)."""
    with _connect(pg_db) as conn:
        assert migrate(conn, target=version) == 0
        assert schema_version(conn) == version
        _fill(conn)
    settings = pg_db.settings(tmp_path / "spool.sqlite3")
    async with await Spool.open(settings, clock=lambda: 100.0) as spool:
        assert await spool.meta_get("schema_version") == str(PG_SCHEMA_VERSION)
        one = await spool.get("OLD1")
        assert [(r.email, r.status) for r in one.recipients] == [
            ("due@Example.NET", RecipientStatus.DEFERRED),
            ("sent@example.net", RecipientStatus.SENT),
        ]
        assert [e.status for e in one.attempts] == [
            AttemptStatus.IN_PROGRESS,
            AttemptStatus.SUCCESS,
            AttemptStatus.FAIL,
            AttemptStatus.DEFERRED,
        ]
        assert await spool.raw("OLD1") == b"x" and await spool.raw("OLD2") == b"y"
        assert (await spool.get("OLD2")).recipients[0].status is RecipientStatus.HELD
        # The upgraded store works: the due recipient is claimed, new mail goes in
        # (its ids after the old ones: the identity columns went on).
        (claim,) = await spool.claim_due(10, lease=60)
        assert claim.queue_id == "OLD1" and claim.crlf_only is False
        await spool.enqueue(
            NewMessage("NEW", "a@example.com", ["b@example.net"], b"N\r\n", "", 100.0)
        )
        assert await spool.raw("NEW") == b"N\r\n"
        counts = await spool.counts_by_status()
        assert counts[RecipientStatus.QUEUED] == 1 and counts[RecipientStatus.HELD] == 1
        assert (await spool.suppressions.active("gone@example.net")) is not None
        assert [a.action for a in await spool.audit_log()] == ["hold"]
        n = await spool.count_selected(Selection(stream="news"), "release")
        assert (n.recipients, n.messages) == (1, 1)


def test_an_upgrade_step_keeps_every_row_and_the_ids_go_on(pg_db: PgDatabase) -> None:
    """A store of the first version, full of mail, upgraded by a later step (``_NEXT``)."""
    steps = (*PG_MIGRATIONS, _NEXT)
    with _connect(pg_db) as conn:
        assert migrate(conn, target=1, steps=steps) == 0
        _fill(conn)
        before = _counts(conn)
        ids = [r[0] for r in conn.execute("SELECT id FROM recipients ORDER BY id")]
        assert migrate(conn, steps=steps) == 1
        assert schema_version(conn) == _NEXT.version
        assert _counts(conn) == before
        rows = conn.execute("SELECT id, rcpt, rcpt_domain, status FROM recipients ORDER BY id")
        assert [tuple(r) for r in rows] == [
            (ids[0], "due@Example.NET", "example.net", "deferred"),
            (ids[1], "sent@example.net", "example.net", "sent"),
            (ids[2], "waits@example.net", "example.net", "held"),
        ]
        # What the step allows now, and the identity column goes on after the old rows.
        new = conn.execute(
            "INSERT INTO recipients (message_id, rcpt, rcpt_domain, status, since, updated_at)"
            " SELECT id, 'q@example.org', 'example.org', 'quarantined', 30, 30 FROM messages"
            " WHERE queue_id = 'OLD2' RETURNING id"
        ).fetchone()
        assert new is not None and new[0] > max(ids)
        # Opening it again changes nothing.
        assert migrate(conn, steps=steps) == _NEXT.version


async def test_a_store_newer_than_the_code_is_refused_and_left_alone(
    pg_db: PgDatabase, tmp_path: Path
) -> None:
    with _connect(pg_db) as conn:
        migrate(conn, target=1)
        _fill(conn)
        migrate(conn, steps=(*PG_MIGRATIONS, _NEXT))
    with pytest.raises(SpoolError, match=rf"schema version {_NEXT.version}, newer than"):
        await Spool.open(pg_db.settings(tmp_path / "spool.sqlite3"))
    with _connect(pg_db) as conn:
        assert schema_version(conn) == _NEXT.version
        assert _counts(conn)["messages"] == 2


def test_a_failing_step_leaves_nothing_behind(pg_db: PgDatabase) -> None:
    """PostgreSQL's DDL is transactional: a step that fails half-way leaves the store as it was."""
    broken = PgMigration(
        _NEXT.version,
        "fixture_broken",
        "ALTER TABLE recipients ADD COLUMN rcpt_domain text;\n"
        "ALTER TABLE recipients ALTER COLUMN rcpt_domain SET NOT NULL;\n",  # rows are NULL
    )
    with _connect(pg_db) as conn:
        migrate(conn)
        _fill(conn)
        with pytest.raises(psycopg.errors.NotNullViolation):
            migrate(conn, steps=(*PG_MIGRATIONS, broken))
        assert schema_version(conn) == PG_SCHEMA_VERSION
        columns = {
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'recipients'"
            )
        }
        assert "rcpt_domain" not in columns
        assert _counts(conn)["recipients"] == 3


def test_nodes_starting_together_make_the_schema_once(pg_db: PgDatabase) -> None:
    """Three nodes open an empty store at once: one runs the steps, the others find them done."""
    found: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def node() -> None:
        try:
            with _connect(pg_db) as conn:
                start.wait(timeout=30)
                found.append(migrate(conn))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert sorted(found) == [0, PG_SCHEMA_VERSION, PG_SCHEMA_VERSION]


def test_the_migrations_arrive_at_sqlites_tables_and_columns(pg_db: PgDatabase) -> None:
    """One set of job modules runs on both stores: the same tables, the same column names."""
    with _connect(pg_db) as conn:
        migrate(conn)
        pg: dict[str, set[str]] = {}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        ):
            pg.setdefault(table, set()).add(column)
    lite = sqlite3.connect(":memory:")
    try:
        lite.executescript(SCHEMA)
        tables = [
            r[0]
            for r in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        sq = {t: {r[1] for r in lite.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        lite.close()
    assert pg == sq
