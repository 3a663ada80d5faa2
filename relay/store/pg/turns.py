"""Turns on PostgreSQL: session advisory locks held on a connection of their own.

A turn (``relay.store.singleton``) is ``pg_try_advisory_lock(key)`` on one
autocommit connection per process, opened at the first ask. Why a session
advisory lock and not a leased row: the lock is the session's, so it ends
exactly when the holder does: a node killed with ``-9`` (the kernel closes
its socket, the server ends the session at once), a database restart, or a
host that vanished (the server's keep-alive, set short for this session,
gives up on it within about 25 s). A leased row would need a renewal write
every few seconds, a lease length to tune against clocks, and would outlive
a dead holder by that length. The lock costs no write, and
``pg_locks`` joined with ``pg_stat_activity`` (``application_name`` is
``sluice turns <node>``) shows who holds what.

A holder must also learn that its session ended while it thought it held
the turn (the network dropped, the server restarted): while any turn is
held, a watch asks the connection every ``CHECK_EVERY`` seconds, and a
failed or late answer sets ``lost`` on every turn it held and closes the
connection. The holder notices within ``CHECK_EVERY + ANSWER_WITHIN``
seconds (10), before the server, which waits out the keep-alive, can hand
the turn to anyone else.

Within one process a turn is held once: a second ``hold`` of the same name
is not granted while the first lasts (PostgreSQL's advisory locks would
grant it again to the same session).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from importlib.resources import files

import psycopg

from relay.errors import SpoolError
from relay.store.pg.conn import PgRow
from relay.store.pg.connect import Target, connect_async, first_line
from relay.store.singleton import Turn, lock_key
from relay.store.sql import load_queries, to_psycopg

__all__ = ["ANSWER_WITHIN", "CHECK_EVERY", "COORDINATION", "PgTurns"]

log = logging.getLogger("sluice.fleet")

#: the PostgreSQL store's own statements for turns and wake-ups
COORDINATION: dict[str, str] = {
    name: to_psycopg(sql)
    for name, sql in load_queries(
        files("relay.store.sql").joinpath("pg", "coordination.sql").read_text(encoding="utf-8")
    ).items()
}

#: while a turn is held, its session is asked after this often (seconds)
CHECK_EVERY = 5.0
#: ... and must answer within this long, or the turns are taken as lost
ANSWER_WITHIN = 5.0

PgConnection = psycopg.AsyncConnection[PgRow]


class PgTurns:
    """This process's turns (``relay.store.singleton.Turns``) as advisory locks."""

    def __init__(
        self,
        target: Target,
        *,
        check_every: float = CHECK_EVERY,
        answer_within: float = ANSWER_WITHIN,
    ) -> None:
        self._target = target
        self._check_every = check_every
        self._answer_within = answer_within
        self._conn: PgConnection | None = None
        #: the turns this process holds now, by name
        self._held: dict[str, Turn] = {}
        self._connecting = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Turn]:
        """This node's turn at ``name`` if nobody holds it; given back when the block ends."""
        if name in self._held or self._closed:
            yield Turn(name, granted=False)
            return
        key = lock_key(name)
        try:
            # One deadline for connecting and asking: the scheduler's sweep asks
            # too, and must not wait on a server that does not answer.
            async with asyncio.timeout(self._answer_within):
                conn = await self._connection()
                cur = await conn.execute(COORDINATION["turn_try"], {"key": key})
                row = await cur.fetchone()
        except (psycopg.Error, SpoolError, TimeoutError) as exc:
            reason = first_line(exc) if not isinstance(exc, TimeoutError) else "no answer"
            await self._drop(reason)
            yield Turn(name, granted=False, error=reason)
            return
        if row is None or not row[0]:
            yield Turn(name, granted=False)
            return
        turn = Turn(name, granted=True)
        self._held[name] = turn
        self._start_watch()
        try:
            yield turn
        finally:
            del self._held[name]
            if not turn.lost.is_set() and self._conn is conn:
                # Shielded: a holder cancelled at shutdown still gives the turn back.
                await asyncio.shield(self._give_back(conn, key))

    async def _give_back(self, conn: PgConnection, key: int) -> None:
        try:
            async with asyncio.timeout(self._answer_within):
                await conn.execute(COORDINATION["turn_give_back"], {"key": key})
        except (psycopg.Error, TimeoutError) as exc:
            # Not given back, so held still, for nobody: end the session to free it.
            await self._drop(first_line(exc) if not isinstance(exc, TimeoutError) else "no answer")

    async def _connection(self) -> PgConnection:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                conn = await connect_async(self._target, "turns")
                try:
                    await conn.execute(COORDINATION["keepalive"])
                except psycopg.Error:
                    await conn.close()
                    raise
                self._conn = conn
            return self._conn

    def _start_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watching(), name="sluice turns watch")

    async def _watching(self) -> None:
        """While turns are held, ask the session now and then; on no answer, they are lost."""
        while self._held:
            await asyncio.sleep(self._check_every)
            conn = self._conn
            if not self._held or conn is None:
                return
            try:
                async with asyncio.timeout(self._answer_within):
                    await conn.execute(COORDINATION["session_alive"])
            except (psycopg.Error, TimeoutError) as exc:
                await self._drop(
                    first_line(exc) if not isinstance(exc, TimeoutError) else "no answer"
                )
                return

    async def _drop(self, reason: str) -> None:
        """The session is gone or unusable: every turn it held is lost; close it."""
        conn, self._conn = self._conn, None
        held = list(self._held.values())
        for turn in held:
            turn.lost.set()
        if held:
            log.warning(
                "fleet: the database session holding this node's turns ended (%s): "
                "stopping %s until this node holds them again",
                reason,
                ", ".join(sorted(t.name for t in held)),
                extra={"event": "fleet"},
            )
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def aclose(self) -> None:
        """Give every turn back, then end the session; stop the watch.

        Ending the session would give the turns back too, but only once the
        server has seen the client go, a moment after ``close`` returns: a
        node that stops cleanly hands its turns over before it says it has.
        """
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(self._answer_within):
                    await conn.execute(COORDINATION["turns_give_back_all"])
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
