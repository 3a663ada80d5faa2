"""Opening the PostgreSQL store: connect, bring the schema up to date, start the writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg

from relay.config import SpoolSettings
from relay.errors import SpoolError
from relay.secrets import SecretError
from relay.store.pg.connect import Target, connect_async, connect_sync, first_line
from relay.store.pg.migrations import migrate
from relay.store.pg.reader import PgReader
from relay.store.pg.writer import PgWriter

__all__ = ["open_pg", "target_of"]


def target_of(settings: SpoolSettings, node: str) -> Target:
    """Where ``settings`` put the store, with its password read (files: call in a thread).

    Raises:
        SpoolError: the password is set but cannot be read.
    """
    assert settings.url is not None
    password = None
    if settings.password is not None:
        try:
            password = settings.password.resolve().get_secret_value()
        except SecretError as exc:
            raise SpoolError(f"cannot open spool.url {settings.url}: {exc}") from None
    return Target(settings.url, password=password, node=node)


async def open_pg(
    settings: SpoolSettings, *, node: str, clock: Callable[[], float] = time.time
) -> tuple[PgWriter, PgReader]:
    """The writer and the reader of the store at ``settings.url``, schema up to date.

    Raises:
        SpoolError: one line naming ``spool.url``: unreachable, refused, or newer than us.
    """
    target = await asyncio.to_thread(target_of, settings, node)
    conn = await asyncio.to_thread(connect_sync, target, "writer")
    try:
        await asyncio.to_thread(migrate, conn)
    except psycopg.Error as exc:
        await asyncio.to_thread(conn.close)
        raise SpoolError(f"cannot open spool.url {target.url}: {first_line(exc)}") from None
    except BaseException:
        await asyncio.to_thread(conn.close)
        raise
    try:
        reader_conn = await connect_async(target, "reader")
    except BaseException:
        await asyncio.to_thread(conn.close)
        raise
    writer = PgWriter(conn, target, asyncio.get_running_loop(), clock=clock)
    reader = PgReader(reader_conn, target)
    return writer, reader
