"""Opening connections to the PostgreSQL store: one line for every failure, no secret in it."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from relay.errors import SpoolError, SpoolUnreachable
from relay.store.pg.conn import PgRow, row_factory

__all__ = ["Target", "connect_async", "connect_sync", "first_line"]

log = logging.getLogger("sluice.spool")


class Target:
    """Where the store is: the URL as written (shown, logged) and the password (never)."""

    def __init__(self, url: str, *, password: str | None = None, node: str = "") -> None:
        self.url = url
        self._password = password
        self.node = node

    def kwargs(self, role: str) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "autocommit": True,
            "application_name": f"sluice {role} {self.node}"[:63],
            "connect_timeout": 10,
        }
        if self._password is not None:
            extra["password"] = self._password
        return extra

    def __repr__(self) -> str:
        return f"Target({self.url!r})"


def first_line(exc: BaseException) -> str:
    """A driver error as one line (libpq's messages run over several)."""
    text = " ".join(str(exc).split("\n")[:1]).strip()
    return text or type(exc).__name__


def connect_sync(target: Target, role: str) -> psycopg.Connection[PgRow]:
    """A synchronous connection (the writer thread's), ``synchronous_commit`` on.

    Raises:
        SpoolError: the server cannot be reached or refuses us; one line naming the URL.
    """
    try:
        conn = psycopg.connect(target.url, row_factory=row_factory, **target.kwargs(role))
    except psycopg.Error as exc:
        raise _open_error(target, exc) from None
    try:
        _durable(conn)
    except psycopg.Error as exc:
        conn.close()
        raise SpoolError(f"cannot open spool.url {target.url}: {first_line(exc)}") from None
    return conn


async def connect_async(target: Target, role: str) -> psycopg.AsyncConnection[PgRow]:
    """An asynchronous autocommit connection (the readers', the listener's).

    Raises:
        SpoolError: as ``connect_sync``.
    """
    try:
        return await psycopg.AsyncConnection.connect(
            target.url, row_factory=row_factory, **target.kwargs(role)
        )
    except psycopg.Error as exc:
        raise _open_error(target, exc) from None


def _open_error(target: Target, exc: psycopg.Error) -> SpoolError:
    """One line naming ``spool.url``; ``SpoolUnreachable`` when no session could be made.

    libpq says why in the same line: nothing listening, the server starting
    or shutting down, a refused password, no such database. Each is an
    ``OperationalError`` without a SQLSTATE, so they are not told apart here:
    for a client waiting on a ``451`` they are one thing, no spool now.
    """
    if isinstance(exc, psycopg.OperationalError):
        return SpoolUnreachable(f"cannot connect to spool.url {target.url}: {first_line(exc)}")
    return SpoolError(f"cannot open spool.url {target.url}: {first_line(exc)}")


def _durable(conn: psycopg.Connection[PgRow]) -> None:
    """``synchronous_commit`` on for this session, whatever the server or role says.

    A ``250`` is given after the message's COMMIT returns; with it off (or
    ``local``/``remote_write`` on a replica set up that way) COMMIT may return
    before the WAL is on disk. Sluice's own sessions always wait; when the
    server's setting was weaker, the log says so once per connection.
    """
    row = conn.execute("SHOW synchronous_commit").fetchone()
    found = str(row[0]) if row is not None else "on"
    if found not in ("on", "remote_apply"):
        log.warning(
            "spool: the server has synchronous_commit=%s; Sluice sets it on for its own "
            "sessions (a 250 waits for the commit to be on disk)",
            found,
        )
        conn.execute("SET synchronous_commit = on")
