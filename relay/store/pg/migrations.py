"""Numbered schema steps of the PostgreSQL store (``sql/pg/migrations/NNNN_<what>.sql``).

As SQLite's runner (``relay/store/migrations.py``): the store's version is
``meta.schema_version`` (0 before the first step), the missing steps run in
order in one transaction, and a store newer than this code is refused.
PostgreSQL's DDL is transactional, so a step that fails leaves nothing
behind; nodes starting together take turns on a transaction-level advisory
lock, and the second finds the work done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg

from relay.errors import SpoolError
from relay.store.pg.conn import PgConn, PgRow
from relay.store.sql import QUERIES

__all__ = ["PG_MIGRATIONS", "PG_SCHEMA_VERSION", "PgMigration", "migrate", "schema_version"]

#: the advisory lock key the runner takes (any constant of Sluice's own)
_LOCK = 0x51C3_0001


@dataclass(frozen=True, slots=True)
class PgMigration:
    """One step: the version it brings a store to, its name, and its script."""

    version: int
    name: str
    script: str


def _load() -> tuple[PgMigration, ...]:
    folder = files("relay.store.sql").joinpath("pg").joinpath("migrations")
    steps = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m is not None:
            steps.append(PgMigration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise RuntimeError("pg migrations must be numbered 0001, 0002, ... without gaps")
    return tuple(steps)


#: every step, in order: ``PG_MIGRATIONS[k - 1]`` brings a store to version ``k``
PG_MIGRATIONS: tuple[PgMigration, ...] = _load()
#: the version this code makes and reads
PG_SCHEMA_VERSION: int = len(PG_MIGRATIONS)


def schema_version(conn: psycopg.Connection[PgRow]) -> int:
    """The store's schema version (0: an empty database)."""
    pg = PgConn(conn)
    if not pg.execute(QUERIES["meta_table_exists"]).fetchone()[0]:  # type: ignore[index]
        return 0
    row = pg.execute(QUERIES["meta_get"], {"key": "schema_version"}).fetchone()
    return int(row[0]) if row is not None else 0


def migrate(conn: psycopg.Connection[PgRow], *, target: int = PG_SCHEMA_VERSION) -> int:
    """Bring the store on ``conn`` (autocommit) to version ``target``; the version it was at.

    Raises:
        SpoolError: the store is newer than this code.
        psycopg.Error: a step failed (nothing of it stays).
    """
    conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        found = schema_version(conn)
        if found > PG_SCHEMA_VERSION:
            raise SpoolError(
                f"the spool has schema version {found}, newer than this Sluice knows"
                f" ({PG_SCHEMA_VERSION}): run the Sluice that made it, or a newer one"
                " (a spool cannot be downgraded)"
            )
        for step in PG_MIGRATIONS[found:target]:
            conn.execute(step.script.encode())
            PgConn(conn).execute(
                QUERIES["meta_set"], {"key": "schema_version", "value": str(step.version)}
            )
        conn.execute("COMMIT")
    except BaseException:
        if not conn.closed:
            conn.execute("ROLLBACK")
        raise
    return found
