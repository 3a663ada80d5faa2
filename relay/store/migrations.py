"""Numbered migrations: the spool's schema made, or brought up to date, when a spool opens.

Each step is a file ``sql/migrations/NNNN_<what>.sql``; a spool at version
*k* (``meta.schema_version``; a new file is at 0) gets steps *k+1* ... in
order, all in one ``BEGIN IMMEDIATE`` transaction, so two processes opening
a spool together (the daemon, a worker, ``sluice queue``) take turns and the
second finds the work done. A spool newer than this code is refused: an
older Sluice cannot know what a later step changed (version 3 rewrote the
log's status words, version 4 constrains them), so there is no way down.

Foreign keys are off while the steps run and checked before the commit, as
SQLite's procedure for rebuilding a table asks
(https://sqlite.org/lang_altertable.html#otheralter).

(alembic and yoyo-migrations do this for a living; they bring their own
connection handling and version table, where the spool needs its writer's
connection, its meta row and its lock. The runner is thirty lines.)
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib.resources import files

from relay.errors import SpoolError
from relay.store.sql import QUERIES

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate", "schema_version"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One step: the version it brings a spool to, its name, and its statements."""

    version: int
    name: str
    statements: tuple[str, ...]


def _statements(script: str) -> tuple[str, ...]:
    """The statements of ``script``, whole (``sqlite3.complete_statement`` finds their ends)."""
    found: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            found.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") for ln in buf.splitlines() if ln.strip()
    ):
        raise ValueError(f"an unfinished statement: {buf.strip()[:80]!r}")
    return tuple(found)


def _load() -> tuple[Migration, ...]:
    folder = files("relay.store.sql").joinpath("migrations")
    steps = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m is None:
            continue
        text = entry.read_text(encoding="utf-8")
        steps.append(Migration(int(m.group(1)), m.group(2), _statements(text)))
    if [s.version for s in steps] != list(range(1, len(steps) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, ... without gaps")
    return tuple(steps)


#: every step, in order: ``MIGRATIONS[k - 1]`` brings a spool to version ``k``
MIGRATIONS: tuple[Migration, ...] = _load()
#: the version this code makes and reads
SCHEMA_VERSION: int = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The spool's schema version (0: a new file, no schema yet)."""
    if not conn.execute(QUERIES["meta_table_exists"]).fetchone()[0]:
        return 0
    row = conn.execute(QUERIES["meta_get"], {"key": "schema_version"}).fetchone()
    return int(row[0]) if row is not None else 0


def migrate(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the spool on ``conn`` to version ``target``; returns the version it was at.

    ``conn`` is in autocommit mode (``isolation_level=None``), as the
    writer's connection is. ``target`` below the latest is for tests that
    make spools of earlier versions.

    Raises:
        SpoolError: the spool is newer than this code.
    """
    # Outside any transaction, or SQLite ignores it (step 1 of the rebuild).
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = schema_version(conn)
            if found > SCHEMA_VERSION:
                raise SpoolError(
                    f"the spool has schema version {found}, newer than this Sluice knows"
                    f" ({SCHEMA_VERSION}): run the Sluice that made it, or a newer one"
                    " (a spool cannot be downgraded)"
                )
            steps = MIGRATIONS[found:target]
            for step in steps:
                for statement in step.statements:
                    conn.execute(statement)
                conn.execute(
                    QUERIES["meta_set"], {"key": "schema_version", "value": str(step.version)}
                )
            # Only after steps ran: the check reads every row of every table
            # with a foreign key, half a second at 100k queued, and every
            # ``sluice`` command and accept worker opens the spool.
            if steps and (broken := conn.execute("PRAGMA foreign_key_check").fetchall()):
                raise SpoolError(f"the spool's foreign keys do not hold: {len(broken)} rows")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return found
