"""The spool's schema, made or brought up to date when a spool is opened."""

from __future__ import annotations

import sqlite3

from relay.store.sql import SCHEMA

__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = "3"
#: Columns added since version 1, as (table, column, definition): a spool made
#: before them gets them when opened, with a default that means "not known".
_ADDED_COLUMNS = (
    ("bodies", "crlf_only", "INTEGER NOT NULL DEFAULT 0"),
    ("messages", "stream", "TEXT NOT NULL DEFAULT ''"),
    ("recipients", "held_at", "REAL"),
    ("recipients", "released_at", "REAL"),
    ("recipients", "route_override", "TEXT"),
)


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older spool's up to date."""
    conn.executescript(SCHEMA)
    # One process at a time: the daemon, a worker and the CLI may open together.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, column, definition in _ADDED_COLUMNS:
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        # Version 3: delivery-log statuses in lower case, like recipients'. An
        # older Sluice cannot read these values, so this step has no way back.
        conn.execute(
            "UPDATE attempts SET status = CASE status WHEN 'IN PROGRESS' THEN 'in_progress'"
            " WHEN 'SUCCESS' THEN 'success' WHEN 'FAIL' THEN 'fail' END"
            " WHERE status IN ('IN PROGRESS', 'SUCCESS', 'FAIL')"
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
