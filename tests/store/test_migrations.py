"""Numbered migrations on real SQLite files: every earlier version opens and keeps its mail.

A spool of each earlier version is made by applying migrations 1..k (what a
Sluice of that version made), filled with rows that version allows, and then
opened by ``Spool.open``, which must bring it to the current version with
the rows intact. A spool newer than the code is refused and left untouched.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from relay.errors import SpoolError
from relay.model import AttemptStatus, RecipientStatus, Selection
from relay.store.migrations import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from relay.store.spool import NewMessage, Spool
from relay.store.sql import SCHEMA


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


def _old_spool(path: Path, version: int) -> None:
    """A spool as a Sluice of ``version`` left it: two messages, their recipients and log."""
    conn = _connect(path)
    try:
        assert migrate(conn, target=version) == 0
        assert schema_version(conn) == version
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO messages (id, queue_id, received_at, sender, subject, size)"
            " VALUES (1, 'OLD1', 10, 'a@example.com', 'one', 13), "
            " (2, 'OLD2', 20, 'a@example.com', 'two', 13)"
        )
        conn.execute("INSERT INTO bodies (message_id, data) VALUES (1, ?), (2, ?)", (b"x", b"y"))
        conn.execute(
            "INSERT INTO recipients (id, message_id, rcpt, status, attempts, since,"
            " next_attempt_at, updated_at) VALUES"
            " (1, 1, 'due@example.net', 'deferred', 1, 10, 0, 10),"
            " (2, 1, 'sent@example.net', 'sent', 1, 10, NULL, 10),"
            " (3, 2, 'waits@example.net', 'queued', 0, 20, 9e9, 20)"
        )
        # Before version 3 the log spelled its statuses the seed's way.
        spelled = (
            ("IN PROGRESS", "SUCCESS", "FAIL")
            if version < 3
            else ("in_progress", "success", "fail")
        )
        for i, status in enumerate((*spelled, "deferred"), start=1):
            conn.execute(
                "INSERT INTO attempts (id, recipient_id, message_id, queue_id, rcpt, started_at,"
                " status) VALUES (?, 1, 1, 'OLD1', 'due@example.net', ?, ?)",
                (i, float(i), status),
            )
        if version >= 2:
            conn.execute("UPDATE bodies SET crlf_only = 1 WHERE message_id = 2")
        if version >= 3:
            conn.execute("UPDATE messages SET stream = 'news' WHERE id = 2")
            conn.execute("UPDATE recipients SET status = 'held', held_at = 15 WHERE id = 3")
            conn.execute(
                "INSERT INTO suppressions (address, scope, source, created_at)"
                " VALUES ('gone@example.net', '', 'manual', 5)"
            )
            conn.execute(
                "INSERT INTO audit (at, actor, action, target, count)"
                " VALUES (15, 'cli:root', 'hold', 'stream=news', 1)"
            )
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
async def test_a_spool_of_every_earlier_version_opens_with_its_rows(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "spool.sqlite3"
    _old_spool(path, version)
    async with await Spool.open(path, clock=lambda: 100.0) as spool:
        assert await spool.meta_get("schema_version") == str(SCHEMA_VERSION)
        one = await spool.get("OLD1")
        assert [(r.email, r.status) for r in one.recipients] == [
            ("due@example.net", RecipientStatus.DEFERRED),
            ("sent@example.net", RecipientStatus.SENT),
        ]
        assert [e.status for e in one.attempts] == [
            AttemptStatus.IN_PROGRESS,
            AttemptStatus.SUCCESS,
            AttemptStatus.FAIL,
            AttemptStatus.DEFERRED,
        ]
        assert await spool.raw("OLD2") == b"y"
        held = RecipientStatus.HELD if version >= 3 else RecipientStatus.QUEUED
        assert (await spool.get("OLD2")).recipients[0].status is held
        # the upgraded spool works: the due recipient is claimed, new mail goes in
        (claim,) = await spool.claim_due(10, lease=60)
        assert claim.queue_id == "OLD1"
        assert claim.crlf_only is False
        await spool.enqueue(
            NewMessage("NEW", "a@example.com", ["b@example.net"], b"N\r\n", "", 100.0)
        )
        queued = 1 if version >= 3 else 2  # NEW, and OLD2's recipient unless it is held
        assert (await spool.counts_by_status())[RecipientStatus.QUEUED] == queued
        if version >= 3:
            assert (await spool.suppressions.active("gone@example.net")) is not None
            assert [a.action for a in await spool.audit_log()] == ["hold"]
            n = await spool.count_selected(Selection(stream="news"), "release")
            assert (n.recipients, n.messages) == (1, 1)
    conn = _connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


async def test_a_new_spool_is_made_by_the_migrations_alone(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    async with await Spool.open(path):
        pass
    conn = _connect(path)
    try:
        assert schema_version(conn) == SCHEMA_VERSION == MIGRATIONS[-1].version
        assert migrate(conn) == SCHEMA_VERSION  # opening again changes nothing
    finally:
        conn.close()


def _shape(conn: sqlite3.Connection) -> dict[str, object]:
    """Tables (columns, keys, CHECKs) and indexes (columns, partial WHERE), as SQLite has them."""
    shape: dict[str, object] = {}
    for kind, name, table, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ):
        text = " ".join(re.sub(r"--[^\n]*", "", sql or "").split())
        if kind == "table":
            shape[name] = (
                [tuple(r) for r in conn.execute(f"PRAGMA table_xinfo({name})")],
                [tuple(r) for r in conn.execute(f"PRAGMA foreign_key_list({name})")],
                re.findall(r"CHECK \(.*?\)\)", text),
            )
        else:
            shape[name] = (
                table,
                [tuple(r) for r in conn.execute(f"PRAGMA index_xinfo({name})")],
                text.partition(" WHERE ")[2],
            )
    return shape


def test_the_migrations_arrive_at_schema_sql(tmp_path: Path) -> None:
    """schema.sql is the schema to read; the migrations are what makes it."""
    migrated = _connect(tmp_path / "migrated.sqlite3")
    written = _connect(tmp_path / "written.sqlite3")
    try:
        migrate(migrated)
        written.executescript(SCHEMA)
        assert _shape(migrated) == _shape(written)
    finally:
        migrated.close()
        written.close()


async def test_a_spool_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    conn = _connect(path)
    try:
        migrate(conn)
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    finally:
        conn.close()
    with pytest.raises(SpoolError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than"):
        await Spool.open(path)
    conn = _connect(path)
    try:
        assert schema_version(conn) == SCHEMA_VERSION + 1
    finally:
        conn.close()


def test_a_failing_step_leaves_the_spool_at_its_version(tmp_path: Path) -> None:
    """All steps are one transaction: a step that fails undoes the ones before it."""
    path = tmp_path / "spool.sqlite3"
    conn = _connect(path)
    try:
        migrate(conn, target=1)
        # A column the version-3 step adds, already there: its ALTER TABLE fails.
        conn.execute("ALTER TABLE messages ADD COLUMN stream TEXT")
        with pytest.raises(sqlite3.Error):
            migrate(conn)
        assert schema_version(conn) == 1
        assert "crlf_only" not in {r[1] for r in conn.execute("PRAGMA table_info(bodies)")}
    finally:
        conn.close()


async def test_the_status_columns_refuse_words_sluice_does_not_know(tmp_path: Path) -> None:
    """Version 4's CHECKs: a stray word is an error when written, not a row nobody claims."""
    path = tmp_path / "spool.sqlite3"
    _old_spool(path, 3)
    async with await Spool.open(path):
        pass
    conn = _connect(path)
    try:
        for sql in (
            "UPDATE recipients SET status = 'defered' WHERE id = 1",
            "UPDATE attempts SET status = 'FAIL' WHERE id = 1",
        ):
            with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
                conn.execute(sql)
        conn.execute("UPDATE recipients SET status = 'held' WHERE id = 1")  # a known word
    finally:
        conn.close()


def test_an_up_to_date_spool_opens_without_reading_its_rows(tmp_path: Path) -> None:
    # The foreign-key check reads every row of every table; every `sluice`
    # command and accept worker opens the spool, so it runs only after steps.
    path = tmp_path / "spool.sqlite3"
    conn = _connect(path)
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    assert migrate(conn) == 0
    assert "PRAGMA foreign_key_check" in seen  # a new spool: the steps ran
    seen.clear()
    assert migrate(conn) == SCHEMA_VERSION
    assert seen and "PRAGMA foreign_key_check" not in seen
    conn.close()
