"""Every named statement has a PostgreSQL form the server accepts (#27).

The job modules run ``QUERIES[...]``; on PostgreSQL the adapter runs each
one's twin (``relay/store/sql/pg/``, else the SQLite text with psycopg's
parameters). Here the server parses, plans and types every one of them
(``PREPARE``), against the schema the migrations make, so a SQLite-only
construct, a column the PostgreSQL schema lacks, or a parameter whose type
the server cannot tell (``$1 IS NULL``) fails here, not in a node at 3 a.m.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from relay.store.pg.conn import PgConn, pg_sql, row_factory
from relay.store.pg.migrations import PG_SCHEMA_VERSION, migrate
from relay.store.sql import PG_QUERIES, QUERIES, to_psycopg
from tests.pg import PgDatabase


def _numbered(sql: str) -> str:
    """``%(name)s`` parameters as ``$1, $2...`` (one number per name), for PREPARE."""
    names: dict[str, int] = {}

    def number(m: re.Match[str]) -> str:
        return f"${names.setdefault(m.group(1), len(names) + 1)}"

    return re.sub(r"%\((\w+)\)s", number, sql).replace("%%", "%")


def test_every_named_statement_prepares_on_postgresql(pg_db: PgDatabase) -> None:
    with psycopg.connect(
        pg_db.url, password=pg_db.password, autocommit=True, row_factory=row_factory
    ) as conn:
        assert migrate(conn) == 0
        refused = {}
        for n, (name, sql) in enumerate(sorted(PG_QUERIES.items())):
            try:
                conn.execute(f"PREPARE s{n} AS {_numbered(sql)}".encode())
            except psycopg.Error as exc:
                refused[name] = str(exc).splitlines()[0]
        assert refused == {}
        row = PgConn(conn).execute(QUERIES["meta_get"], {"key": "schema_version"}).fetchone()
        assert row is not None and row[0] == str(PG_SCHEMA_VERSION)


def test_a_statement_that_is_not_named_is_refused() -> None:
    """The adapter runs named statements only: a stray one is a bug, never passed through."""
    with pytest.raises(psycopg.ProgrammingError, match="not a named statement"):
        pg_sql("DELETE FROM messages")


def test_the_numbering_would_catch_a_sqlite_only_statement(pg_db: PgDatabase) -> None:
    """The check above can fail: SQLite's own text of a twinned statement is refused."""
    with psycopg.connect(pg_db.url, password=pg_db.password, autocommit=True) as conn:
        migrate(conn)  # type: ignore[arg-type]
        sqlite_text = to_psycopg(QUERIES["dsn_mark"])  # INSERT OR IGNORE ...
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute(f"PREPARE x AS {_numbered(sqlite_text)}".encode())
