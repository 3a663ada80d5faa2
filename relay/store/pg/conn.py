"""A psycopg connection in the shape of ``sqlite3.Connection`` (``relay.store.db.Conn``).

``execute`` is handed the SQLite text of a named statement (``QUERIES[...]``,
as the job modules write it) and runs its PostgreSQL twin (``PG_TWINS``). A
text with no twin is refused: every statement Sluice runs is named, so an
unknown one is a bug, never something to pass through. Parameters stay the
dicts the modules build; psycopg binds them server-side (the binary protocol
for bytes), and prepares a statement after its fifth run.

``lastrowid`` is the ``id`` an ``INSERT ... RETURNING id`` twin gave back
(PostgreSQL has no rowid). Rows are ``PgRow``: by column name and by index,
as ``sqlite3.Row``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from relay.store.db import Params
from relay.store.sql import PG_TWINS

__all__ = ["PgConn", "PgCursor", "PgRow", "pg_sql", "row_factory"]


class PgRow:
    """One result row: ``row["name"]`` and ``row[0]``, as ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(zip(self._index, self._values, strict=True))!r})"


def row_factory(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> RowMaker[PgRow]:
    """psycopg's row factory for ``PgRow``: the column index is made once per result."""
    desc = cursor.description
    index = {} if desc is None else {col.name: i for i, col in enumerate(desc)}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(values, index)

    return make


def pg_sql(sql: str) -> str:
    """The PostgreSQL twin of a named statement's SQLite text.

    Raises:
        psycopg.ProgrammingError: ``sql`` is no named statement of ``relay/store/sql``.
    """
    twin = PG_TWINS.get(sql)
    if twin is None:
        raise psycopg.ProgrammingError(f"not a named statement of relay/store/sql: {sql[:80]!r}")
    return twin


class PgCursor:
    """A statement's results, fetched at once (``sqlite3.Cursor``'s part the modules use)."""

    def __init__(self, rows: list[PgRow], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self._pos = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> PgRow | None:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchall(self) -> list[PgRow]:
        rest, self._pos = self._rows[self._pos :], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[PgRow]:
        while (row := self.fetchone()) is not None:
            yield row


class PgConn:
    """The writer thread's connection, inside the writer's transaction (``Conn``)."""

    def __init__(self, conn: psycopg.Connection[PgRow]) -> None:
        self.raw = conn

    def execute(self, sql: str, parameters: Params = (), /) -> PgCursor:
        twin = pg_sql(sql)
        cur = self.raw.execute(twin, parameters or None)
        return _results(cur, returning_id=twin in _ADDS_RETURNING_ID)

    def executemany(self, sql: str, parameters: Iterable[Params], /) -> PgCursor:
        with self.raw.cursor() as cur:
            cur.executemany(pg_sql(sql), list(parameters))
            return PgCursor([], cur.rowcount, None)


#: twins that return the new row's ``id`` where SQLite's text has ``lastrowid`` instead
_ADDS_RETURNING_ID = frozenset(
    twin
    for sql, twin in PG_TWINS.items()
    if twin.rstrip("; \n").endswith("RETURNING id") and "RETURNING" not in sql
)


def _results(cur: psycopg.Cursor[PgRow], *, returning_id: bool) -> PgCursor:
    rows = cur.fetchall() if cur.description is not None else []
    lastrowid = int(rows[0][0]) if returning_id and rows else None
    return PgCursor(rows, cur.rowcount, lastrowid)
