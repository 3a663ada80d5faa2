"""Wake-ups on PostgreSQL: NOTIFY in the committing transaction, one LISTEN per process.

A node that makes mail due (accepts it, releases it, retries it, resumes a
paused provider) or stores webhook events says so with ``pg_notify`` inside
the very transaction that does it (``PgWakeups.notify``, called by the job in
the writer thread): the notification goes out when that transaction commits
and never if it rolls back, and several in one group commit are folded into
one (same channel, same payload). A process that listens (``Spool.listen``:
the daemon) keeps one connection of its own on both channels and sets the
spool's ``wake`` or ``outbox_wake``, so an idle node's scheduler claims mail
accepted on another node at once instead of at its next poll, and the node
posting an endpoint's webhooks hears of events another node stored.

A process's notifications carry its ``sender`` token, and its own listener
skips them: it set its events already, after the commit.

Polling stays as the fallback: while the listener's connection is down
(the server restarting, the network), the scheduler claims at every
``delivery.poll_interval`` as on SQLite. The listener tries again every
``RETRY_EVERY`` seconds and, once back, sets both events, since whatever it
missed meanwhile may be due now. A connection that stopped answering is
found by asking it every ``CHECK_EVERY`` seconds while no notification comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import weakref
from typing import Literal

import psycopg

from relay.errors import SpoolError
from relay.store.db import Conn
from relay.store.pg.conn import PgConn, PgRow
from relay.store.pg.connect import Target, connect_async, first_line
from relay.store.pg.turns import ANSWER_WITHIN, CHECK_EVERY, COORDINATION

__all__ = ["CHANNELS", "RETRY_EVERY", "PgWakeups", "Wake"]

log = logging.getLogger("sluice.fleet")

#: which of the spool's events a notification sets: ``wake`` (mail became due,
#: the scheduler's) or ``outbox_wake`` (webhook events stored, the sender's)
Wake = Literal["wake", "outbox_wake"]
#: the channel of each (``coordination.sql``'s ``listen`` names the same)
CHANNELS: dict[Wake, str] = {"wake": "sluice_wake", "outbox_wake": "sluice_outbox"}
#: while the listener is down, it tries to connect again this often (seconds)
RETRY_EVERY = 2.0


class PgWakeups:
    """This process's side of the wake-ups: NOTIFY in its writes, a listener if asked."""

    def __init__(
        self,
        target: Target,
        events: dict[Wake, asyncio.Event],
        *,
        check_every: float = CHECK_EVERY,
        retry_every: float = RETRY_EVERY,
    ) -> None:
        self._target = target
        self._events = {CHANNELS[which]: event for which, event in events.items()}
        #: what this process's notifications carry, so that its own listener skips them
        self.sender = secrets.token_hex(8)
        #: the channels notified in each open transaction (the writer thread's alone)
        self._sent: weakref.WeakKeyDictionary[PgConn, set[Wake]] = weakref.WeakKeyDictionary()
        self._check_every = check_every
        self._retry_every = retry_every
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[PgRow] | None = None
        #: set while LISTEN is in place, cleared when its connection is lost
        self.listening = asyncio.Event()
        #: why the listener is down, as last logged ("" while it listens)
        self._down = ""

    def notify(self, c: Conn, which: Wake) -> None:
        """In a writer job: every listening process hears ``which`` once this commits.

        Once per channel and transaction (``c`` is the writer's adapter of one
        transaction): the server would fold the same notification sent twice
        anyway, and each costs a round trip. It is sent after the job's own
        work succeeded, and the writer releases a job's SAVEPOINT as soon as
        the job returns, so what one job sent is never rolled back by a later
        job of the same group commit. (The writer makes a new adapter per
        transaction; ``tests/store/test_wakeups.py`` wakes twice in a row.)
        """
        assert isinstance(c, PgConn), "a NOTIFY needs the PostgreSQL writer's connection"
        sent = self._sent.setdefault(c, set())
        if which in sent:
            return
        c.raw.execute(COORDINATION["notify"], {"channel": CHANNELS[which], "sender": self.sender})
        sent.add(which)

    def listen(self) -> None:
        """Start listening (once; in the running loop), until ``aclose``."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sluice wake listener")

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except (psycopg.Error, SpoolError, TimeoutError, OSError) as exc:
                reason = "no answer" if isinstance(exc, TimeoutError) else first_line(exc)
                if not self._down:
                    log.warning(
                        "fleet: not hearing other nodes' wake-ups (%s); claiming every "
                        "delivery.poll_interval until the listener is back",
                        reason,
                        extra={"event": "fleet"},
                    )
                self._down = reason
            self.listening.clear()
            await self._close()
            await asyncio.sleep(self._retry_every)

    async def _listen(self) -> None:
        conn = await connect_async(self._target, "listener")
        self._conn = conn
        await conn.execute(COORDINATION["keepalive"])
        await conn.execute(COORDINATION["listen"])
        if self._down:
            log.info("fleet: hearing other nodes' wake-ups again", extra={"event": "fleet"})
            self._down = ""
        # Whatever was made due while nobody listened may be due now.
        for each in self._events.values():
            each.set()
        self.listening.set()
        while True:
            async for note in conn.notifies(timeout=self._check_every):
                event = self._events.get(note.channel)
                if event is not None and note.payload != self.sender:
                    event.set()
            # No notification for a while: is the server still there?
            async with asyncio.timeout(ANSWER_WITHIN):
                await conn.execute(COORDINATION["session_alive"])

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()
