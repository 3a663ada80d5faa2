"""The PostgreSQL store's writer: one thread, one connection, group commit.

The same contract as SQLite's ``Writer`` (``relay/store/writer.py``): jobs
queued while a transaction is being written are batched into the next one,
each in its own SAVEPOINT so that a failing job rolls back alone, and every
caller is answered only after the COMMIT of its job returned, with
``synchronous_commit`` on (``connect.connect_sync``). ``durable=False`` jobs
(leases, counters) commit with ``synchronous_commit = off`` when the batch
holds nothing else: a crash of the server may lose them, never mail.

When the server goes away (restart, network), the batch in flight fails
with ``SpoolUnreachable`` (the listener answers 4xx, nothing was
acknowledged), and the next batch connects again; until it can, each batch
fails at once, with at most one connection attempt per ``RECONNECT_EVERY``
seconds. A connection the server ended while it sat idle is found dead at
the batch's ``BEGIN``, before any job ran: that batch runs again on a new
connection instead of failing once after the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import psycopg

from relay.errors import SpoolError, SpoolUnreachable
from relay.store.pg.conn import PgConn, PgRow
from relay.store.pg.connect import Target, connect_sync, first_line
from relay.store.writer import WriteHealth, resolve_future

__all__ = ["RECONNECT_EVERY", "PgWriter"]

log = logging.getLogger("sluice.spool")

T = TypeVar("T")
PgJob = Callable[[PgConn], T]
_Item = tuple[PgJob[Any], "asyncio.Future[Any]", bool]

#: jobs in one transaction, at most
_BATCH_MAX = 512
#: how many times a batch the server aborted for a deadlock runs again
_RETRIES = 3
#: while the server is away, one connection attempt per this many seconds
RECONNECT_EVERY = 1.0


class PgWriter:
    """One thread, one connection, batched transactions (group commit)."""

    def __init__(
        self,
        conn: psycopg.Connection[PgRow] | None,
        target: Target,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._target = target
        self._loop = loop
        self._clock = clock
        self._next_connect = 0.0
        self._lost_said = False
        #: the last write failure and success, for ``/healthz``
        self.health = WriteHealth()
        self._cond = threading.Condition()
        self._jobs: list[_Item] = []
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sluice-pg-writer", daemon=True)
        self._thread.start()

    async def submit(self, job: Callable[[Any], T], *, durable: bool = True) -> T:
        """Run ``job`` in the next transaction; return once it is committed."""
        if self._closing:
            raise SpoolError("the spool is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        with self._cond:
            self._jobs.append((job, future, durable))
            self._cond.notify()
        return await future

    @property
    def disk_full(self) -> bool:
        """PostgreSQL's disk is its own business: a write it refuses is an error like others."""
        return False

    @property
    def unreachable(self) -> bool:
        """The server was found out of reach under a second ago (no I/O).

        The listener refuses mail at ``MAIL`` meanwhile, as for a full disk.
        Past that second it lets the next message through to ``DATA``, whose
        write tries to connect again: so a process that writes nothing else
        (an accept worker) still finds out when the server is back.
        """
        return self._lost_said and time.monotonic() < self._next_connect

    def short_of_room(self) -> str | None:
        return None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs and self._closing:
                    break
                batch, self._jobs = self._jobs[:_BATCH_MAX], self._jobs[_BATCH_MAX:]
            self._run_batch(batch)
            del batch
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()

    def _connection(self) -> psycopg.Connection[PgRow]:
        """The live connection, connecting again (at most once a second) after a loss."""
        if self._conn is not None and not self._conn.closed:
            return self._conn
        now = time.monotonic()
        if now < self._next_connect:
            raise SpoolUnreachable(f"spool {self._target.url} unreachable; trying again")
        self._next_connect = now + RECONNECT_EVERY
        self._conn = connect_sync(self._target, "writer")
        if self._lost_said:
            self._lost_said = False
            log.warning("spool %s reachable again: taking mail", self._target.url)
        return self._conn

    def _run_batch(self, batch: list[_Item]) -> None:
        batch = [item for item in batch if not item[1].cancelled()]
        if not batch:
            return
        failure: str | None = None
        try:
            results, failure, changed = self._retrying(batch)
        except _Stale as stale:
            error = self._lost(stale.error)
            results, failure, changed = [(False, error)] * len(batch), str(error), False
        except (psycopg.Error, SpoolError) as exc:
            error = exc if isinstance(exc, SpoolError) else self._lost(exc)
            if isinstance(error, SpoolUnreachable):
                self._say_lost(str(error))
            results, failure, changed = [(False, error)] * len(batch), str(error), False
        if failure is not None:
            h = self.health
            self.health = replace(
                h, last_error=failure, last_error_at=self._clock(), errors=h.errors + 1
            )
        elif changed:
            self.health = replace(self.health, last_ok_at=self._clock())
        for (_job, fut, _durable), (ok, value) in zip(batch, results, strict=True):
            self._loop.call_soon_threadsafe(resolve_future, fut, ok, value)

    def _retrying(self, batch: list[_Item]) -> tuple[list[tuple[bool, Any]], str | None, bool]:
        """``_transaction``, run again when nothing of it ran or the server undid it.

        - The server ended the connection while it was idle (a restart, a
          failover): that shows at ``BEGIN`` (``_Stale``), before any job ran,
          so the batch runs once more on a new connection.
        - Nodes sharing the store write the same rows (counters, meta, a
          recipient a sweep takes back) from their own group commits, in their
          own orders: PostgreSQL breaks a deadlock by aborting one of the
          transactions (SQLSTATE 40P01; 40001 for a serialization failure).
          Its jobs did nothing, so the batch runs again, whole, a few times,
          after a short random pause, rather than failing every caller in it.
        """
        conn = self._connection()
        replayed = False
        attempt = 0
        while True:
            try:
                return self._transaction(conn, batch)
            except _Stale:
                if replayed:
                    raise
                replayed = True
                conn = self._connection()
            except psycopg.OperationalError as exc:
                # class 40, "transaction rollback": 40P01 deadlock, 40001 serialization
                rolled_back = (exc.sqlstate or "").startswith("40")
                if not rolled_back or conn.closed or attempt == _RETRIES:
                    raise
                attempt += 1
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                log.info("spool: %s; running the batch again", first_line(exc))
                time.sleep(random.uniform(0.001, 0.02) * attempt)

    def _lost(self, exc: psycopg.Error) -> SpoolError:
        """A failed transaction; when the connection went with it, say so once."""
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            return SpoolError(f"spool commit failed: {first_line(exc)}")
        self._say_lost(first_line(exc))
        return SpoolUnreachable(f"spool {self._target.url} unreachable: {first_line(exc)}")

    def _say_lost(self, reason: str) -> None:
        """The server is out of reach: one line, until ``_connection`` says it is back."""
        if not self._lost_said:
            self._lost_said = True
            log.error(
                "spool %s lost (%s): refusing mail (451) until it is back",
                self._target.url,
                reason,
                extra={"event": "spool_lost"},
            )

    def _transaction(
        self, conn: psycopg.Connection[PgRow], batch: list[_Item]
    ) -> tuple[list[tuple[bool, Any]], str | None, bool]:
        """Each job in its own SAVEPOINT (one alone needs none); raises if COMMIT fails.

        The transaction's own statements (``BEGIN``, ``SAVEPOINT``, ``RELEASE``,
        ``COMMIT``) have no parameters and no result to read, so they wait and
        go out together, one simple query, just before the next job or as the
        ``COMMIT``: a batch of *n* jobs costs *n* + 1 round trips of them
        instead of 2 *n* + 2. Each round trip is the writer thread waiting for
        the server, and the one writer is the store's bottleneck (bench/RESULTS.md).
        """
        results: list[tuple[bool, Any]] = []
        failure: str | None = None
        durable = any(d for _, _, d in batch)
        pg = PgConn(conn)
        pending = ["BEGIN"] if durable else ["BEGIN", "SET LOCAL synchronous_commit = off"]
        savepoints = len(batch) > 1
        open_tx = True
        for job, _fut, _durable in batch:
            if savepoints:
                pending.append("SAVEPOINT job")
            _send(conn, pending)
            try:
                results.append((True, job(pg)))
                if savepoints:
                    pending.append("RELEASE SAVEPOINT job")
            except psycopg.OperationalError:
                raise  # the connection (or the server) failed: every job of the batch is lost
            except Exception as exc:
                if savepoints:
                    pending += ["ROLLBACK TO SAVEPOINT job", "RELEASE SAVEPOINT job"]
                else:
                    conn.execute("ROLLBACK")
                    open_tx = False
                if isinstance(exc, psycopg.Error):
                    exc = SpoolError(f"spool write failed: {first_line(exc)}")
                results.append((False, exc))
        if open_tx:
            _send(conn, [*pending, "COMMIT"])
        return results, failure, open_tx and any(ok for ok, _ in results)

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)


def _send(conn: psycopg.Connection[PgRow], statements: list[str]) -> None:
    """Run ``statements`` (constant, no parameters) as one simple query, and empty the list.

    Raises:
        _Stale: the statements began the transaction (``BEGIN`` first) and the
            server had already closed the connection: nothing of the batch ran.
    """
    if not statements:
        return
    try:
        conn.execute("; ".join(statements))
    except psycopg.OperationalError as exc:
        if statements[0] == "BEGIN" and conn.closed:
            raise _Stale(exc) from None
        raise
    statements.clear()


class _Stale(SpoolError):
    """The connection was found dead at ``BEGIN``: no job of the batch has run."""

    def __init__(self, error: psycopg.OperationalError) -> None:
        super().__init__(str(error))
        self.error = error
