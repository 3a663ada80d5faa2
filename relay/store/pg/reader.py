"""The PostgreSQL store's readers' connection, in the shape of aiosqlite's (``db.Reader``).

Autocommit: every statement sees what was committed when it started, as a
reader of the SQLite spool does. One asyncio connection serves the process's
readers (psycopg serialises its use); after the server went away it is made
again by the next read, and a read that finds it broken fails with
``SpoolError`` rather than a driver error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Generator
from typing import Any

import psycopg

from relay.errors import SpoolError, SpoolUnreachable
from relay.store.db import Params
from relay.store.pg.conn import PgRow, pg_sql
from relay.store.pg.connect import Target, connect_async, first_line

__all__ = ["PgReader"]


class _Rows:
    """A statement's rows, fetched at once (``ReaderCursor``)."""

    def __init__(self, rows: list[PgRow]) -> None:
        self._rows = rows
        self._pos = 0

    async def fetchone(self) -> PgRow | None:
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    async def fetchall(self) -> list[PgRow]:
        rest, self._pos = self._rows[self._pos :], len(self._rows)
        return rest

    def __aiter__(self) -> AsyncIterator[PgRow]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[PgRow]:
        while (row := await self.fetchone()) is not None:
            yield row


class _Result:
    """``execute``'s result: ``async with`` it for the rows (as aiosqlite's ``Result``)."""

    def __init__(self, reader: PgReader, sql: str, params: Params) -> None:
        self._reader = reader
        self._sql = sql
        self._params = params

    async def __aenter__(self) -> _Rows:
        return _Rows(await self._reader.execute_fetchall(self._sql, self._params))

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        return None

    def __await__(self) -> Generator[Any, None, _Rows]:
        return self.__aenter__().__await__()


class PgReader:
    """The readers' connection (``relay.store.db.Reader``)."""

    def __init__(self, conn: psycopg.AsyncConnection[PgRow], target: Target) -> None:
        self._conn: psycopg.AsyncConnection[PgRow] | None = conn
        self._target = target
        self._lock = asyncio.Lock()

    def execute(self, sql: str, parameters: Params = (), /) -> _Result:
        return _Result(self, sql, parameters)

    async def execute_fetchall(self, sql: str, parameters: Params = (), /) -> list[PgRow]:
        twin = pg_sql(sql)
        # Twice at most: a connection the server ended while it sat idle (a
        # restart) is found dead by the first read after; a read changes
        # nothing, so it is asked again on a new connection.
        for last in (False, True):
            conn = await self._connection()
            try:
                cur = await conn.execute(twin, parameters or None)
                return await cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError as exc:
                if not conn.closed:
                    raise SpoolError(f"spool read failed: {first_line(exc)}") from None
                self._conn = None
                if last:
                    raise SpoolUnreachable(
                        f"spool {self._target.url} unreachable: {first_line(exc)}"
                    ) from None
        raise AssertionError("unreachable")

    async def raw(self, sql: str, parameters: dict[str, Any] | None = None) -> list[PgRow]:
        """A statement of the backend's own (not a named one): the node table, the listener."""
        conn = await self._connection()
        cur = await conn.execute(sql, parameters)
        return await cur.fetchall() if cur.description is not None else []

    async def _connection(self) -> psycopg.AsyncConnection[PgRow]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = await connect_async(self._target, "reader")
            return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
