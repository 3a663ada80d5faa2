"""The spool's write engine: one thread, one connection, group commit.

Jobs (functions of a ``sqlite3.Connection``) queued while a transaction is
being written are batched into the next one, each inside its own SAVEPOINT,
so a failing job rolls back alone. Every caller is answered only after the
``COMMIT`` of its own job has returned; with WAL and ``synchronous=FULL``
that means the change is on stable storage. A job whose caller went away
before it started is skipped.

``Checkpointer`` copies the WAL back into the database from its own thread,
mostly outside the write lock, so that the copy no longer stalls the writers.

Both keep a small health record (``WriteHealth``, ``CheckpointHealth``) that
``/healthz`` and ``/metrics`` read: a spool whose disk is full must not look
healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from relay.errors import SpoolError

__all__ = [
    "SPOOL_FILE_MODE",
    "CheckpointHealth",
    "Checkpointer",
    "Job",
    "WriteHealth",
    "Writer",
    "connect",
    "write_lock_path",
]

log = logging.getLogger("sluice.spool")

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]

_BATCH_MAX = 512

#: WAL pages after which a writer's own COMMIT copies the WAL into the
#: database (SQLite's default is 1,000). It is only the fallback for when no
#: ``Checkpointer`` runs (``sluice queue`` without a daemon) or it falls behind.
AUTOCHECKPOINT_PAGES = 16_384
#: After a reset, a WAL file larger than this is truncated back to it.
_WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: A failing checkpointer waits twice as long after each failure, up to this.
_CHECKPOINT_BACKOFF_MAX = 30.0
#: ... and says so in the log at most this often while it keeps failing.
_CHECKPOINT_LOG_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class WriteHealth:
    """How the spool's writes are going (replaced whole, so a reader sees one state).

    ``failing`` holds from a failed write (a job's ``sqlite3.OperationalError``
    such as "database or disk is full", or a failed ``COMMIT``) until a later
    commit that changed something succeeds: an empty commit succeeds even on
    a full disk, so it proves nothing.
    """

    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    errors: int = 0

    @property
    def failing(self) -> bool:
        if self.last_error_at is None:
            return False
        return self.last_ok_at is None or self.last_ok_at < self.last_error_at


@dataclass(frozen=True, slots=True)
class CheckpointHealth:
    """How the WAL checkpoints are going; ``failing`` until one succeeds again."""

    running: bool = True
    failing: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    errors: int = 0


#: The spool holds mail: its owner reads and writes it, the group (``sluice`` in the
#: unit, for ``sluice queue`` run by an admin of that group) may read it, others nothing.
SPOOL_FILE_MODE = 0o640


def _create(path: Path) -> None:
    """Create the spool file with ``SPOOL_FILE_MODE`` if it does not exist yet.

    SQLite would create it 0644 (less the umask); its -wal and -shm files copy
    the database file's mode when SQLite makes them. Only a *new* file is
    opened here (``O_EXCL``): closing any descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's included, so an existing
    spool, which another connection of this process may hold, is never touched.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, SPOOL_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    _create(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on stable storage before COMMIT returns (power-loss safe).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
    return conn


def write_lock_path(spool: Path) -> Path:
    """The file every process writing ``spool`` takes turns on with ``flock``."""
    return spool.with_name(spool.name + "-writelock")


class Writer:
    """One thread, one connection, batched transactions (group commit)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        *,
        lock_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._lock_fd = _open_lock(lock_path) if lock_path is not None else None
        self._loop = loop
        self._clock = clock
        #: the last write failure and success, for ``/healthz``
        self.health = WriteHealth()
        self._cond = threading.Condition()
        self._jobs: list[tuple[Job[Any], asyncio.Future[Any], bool]] = []
        self._synchronous = "FULL"
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="sluice-spool-writer", daemon=True)
        self._thread.start()

    async def submit(self, job: Job[T], *, durable: bool = True) -> T:
        """Run ``job`` in the next transaction; return once it is committed.

        ``durable=False`` is for changes whose loss in a power cut is harmless
        (a delivery lease: losing it only puts the mail back in the queue). A
        batch made only of such jobs commits with ``synchronous=NORMAL``: safe
        against a process crash, not fsynced; the next durable commit syncs it
        too, since WAL frames are written in order.
        """
        if self._closing:
            raise SpoolError("the spool is closed")
        future: asyncio.Future[T] = self._loop.create_future()
        with self._cond:
            self._jobs.append((job, future, durable))
            self._cond.notify()
        return await future

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closing:
                    self._cond.wait()
                if not self._jobs and self._closing:
                    break
            # The batch is taken once our turn has come: what arrived while
            # another process was writing joins this transaction.
            with _flocked(self._lock_fd):
                with self._cond:
                    batch, self._jobs = self._jobs[:_BATCH_MAX], self._jobs[_BATCH_MAX:]
                self._run_batch(batch)
            # Not kept until the next batch: its jobs hold what they wrote
            # (a 25 MB message) and its futures what they read.
            del batch
        self._conn.close()

    def _run_batch(self, batch: list[tuple[Job[Any], asyncio.Future[Any], bool]]) -> None:
        # A job whose caller went away before it started (client dropped during
        # DATA) is skipped: nobody will be told 250 for it.
        batch = [item for item in batch if not item[1].cancelled()]
        if not batch:
            return
        changes = self._conn.total_changes
        try:
            level = "FULL" if any(durable for _, _, durable in batch) else "NORMAL"
            if level != self._synchronous:
                self._conn.execute(f"PRAGMA synchronous={level}")
                self._synchronous = level
            results, failure = self._transaction(batch)
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            error = SpoolError(f"spool commit failed: {exc}")
            results, failure = [(False, error)] * len(batch), str(error)
        if failure is not None:
            h = self.health
            self.health = replace(
                h, last_error=failure, last_error_at=self._clock(), errors=h.errors + 1
            )
        elif self._conn.total_changes != changes:
            self.health = replace(self.health, last_ok_at=self._clock())
        for (_job, fut, _durable), (ok, value) in zip(batch, results, strict=True):
            self._loop.call_soon_threadsafe(_resolve, fut, ok, value)

    def _transaction(
        self, batch: list[tuple[Job[Any], asyncio.Future[Any], bool]]
    ) -> tuple[list[tuple[bool, Any]], str | None]:
        """Each job in its own SAVEPOINT (one alone needs none); raises if COMMIT fails.

        Returns each job's outcome, and the first operational failure of a job
        (disk full, I/O error: what ``/healthz`` reports), if any.
        """
        results: list[tuple[bool, Any]] = []
        failure: str | None = None
        self._conn.execute("BEGIN IMMEDIATE")
        # Alone in its transaction (one client, or a quiet spool), a job needs
        # no SAVEPOINT: rolling the transaction back undoes it alone, and the
        # two statements a savepoint costs are saved.
        savepoints = len(batch) > 1
        for job, _fut, _durable in batch:
            if savepoints:
                self._conn.execute("SAVEPOINT job")
            try:
                results.append((True, job(self._conn)))
                if savepoints:
                    self._conn.execute("RELEASE job")
            except sqlite3.Error as exc:
                if not self._conn.in_transaction:
                    # SQLite rolled the whole transaction back itself (it may on
                    # SQLITE_FULL, IOERR, BUSY, NOMEM): every job of the batch is
                    # lost, and the cause is this error, not "no such savepoint".
                    raise
                self._undo(savepoints)
                error = SpoolError(f"spool write failed: {exc}")
                if isinstance(exc, sqlite3.OperationalError) and failure is None:
                    failure = str(error)
                results.append((False, error))
            except Exception as exc:
                self._undo(savepoints)
                results.append((False, exc))
        if self._conn.in_transaction:  # not when the one job was undone
            self._conn.execute("COMMIT")
        return results, failure

    def _undo(self, savepoint: bool) -> None:
        """Undo the job that failed: to its savepoint, or the whole transaction it had alone."""
        if savepoint:
            self._conn.execute("ROLLBACK TO job")
            self._conn.execute("RELEASE job")
        else:
            self._conn.execute("ROLLBACK")

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


class Checkpointer:
    """Copies the WAL into the database from its own thread, mostly outside the write lock.

    SQLite's automatic checkpoint runs inside the ``COMMIT`` that crosses
    1,000 WAL pages, while that writer holds the write lock: with 100 KB
    messages every sixth commit or so also copied 4 MB and fsynced the
    database, and every writer waiting for its turn waited for that too.

    Here a ``PASSIVE`` checkpoint, which does not block writers, copies the
    WAL every ``interval`` seconds. Writers keep appending meanwhile, so the
    WAL would never be wholly copied and could not start over: once it holds
    ``restart_pages`` pages, a second pass copies what came in during the
    first, and a last one runs with the write lock held, copying only the
    last few commits. The next writer then starts the WAL again from its
    beginning. The writers' own automatic checkpoint stays on at
    ``AUTOCHECKPOINT_PAGES`` as a fallback.

    Only the daemon runs one (``Spool.open(checkpoints=True)``). If the
    write-lock file cannot be opened it still copies, but never prepares a
    restart; the writers' fallback then starts the WAL over.

    A failure (disk full, I/O error, even a connection that cannot be
    opened) does not stop it: it logs (at most once a minute while the
    failure lasts), waits twice as long as before (up to 30 s), opens a new
    connection and tries again, and says so when it works again. ``health``
    tells ``/healthz`` meanwhile. ``connect`` is the seam for the connection.
    """

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        *,
        interval: float = 0.1,
        restart_pages: int = 1_000,
        connect: Callable[[Path], sqlite3.Connection] = connect,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = path
        self._connect = connect
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock_fd = _open_lock(lock_path)
        self._interval = interval
        self._restart_pages = restart_pages
        self._stop = threading.Event()
        #: WAL restarts prepared (the WAL was wholly copied with the lock held).
        self.restarts = 0
        self.health = CheckpointHealth()
        self._thread = threading.Thread(target=self._run, name="sluice-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        delay = self._interval
        logged_at: float | None = None
        try:
            while not self._stop.wait(delay):
                try:
                    self._round()
                except Exception as exc:  # sqlite3.Error, OSError: keep going, see above
                    self._close_conn()
                    now = self._clock()
                    h = self.health
                    self.health = replace(
                        h,
                        failing=True,
                        last_error=str(exc) or type(exc).__name__,
                        last_error_at=now,
                        errors=h.errors + 1,
                    )
                    delay = min(max(delay * 2, self._interval), _CHECKPOINT_BACKOFF_MAX)
                    if logged_at is None or now - logged_at >= _CHECKPOINT_LOG_EVERY:
                        logged_at = now
                        log.error(
                            "spool checkpoint failed: %s; trying again in %.3g s "
                            "(the writers' own checkpoints go on meanwhile)",
                            exc,
                            delay,
                        )
                    continue
                if self.health.failing:
                    log.warning("spool checkpoints work again")
                    logged_at = None
                self.health = replace(self.health, failing=False, last_ok_at=self._clock())
                delay = self._interval
        finally:
            self._close_conn()
            self.health = replace(self.health, running=False)

    def _round(self) -> None:
        if self._conn is None:
            self._conn = self._connect(self._path)
        pages = self._checkpoint(self._conn)
        if pages >= self._restart_pages and self._lock_fd is not None:
            self._checkpoint(self._conn)
            with _flocked(self._lock_fd):
                self._checkpoint(self._conn)
            self.restarts += 1

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> int:
        """One PASSIVE checkpoint; the number of pages in the WAL."""
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[1])

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


@contextlib.contextmanager
def _flocked(fd: int | None) -> Iterator[None]:
    """Hold the spool's write lock, shared with every process writing this spool.

    SQLite lets one writer in at a time and makes the others poll with
    sleeps of 1, 2, 5, 10... ms; with accept workers and the daemon
    committing in turn, that polling was most of an accept's latency.
    ``flock`` hands the turn over as soon as the holder's COMMIT returns.
    SQLite's own locking stays in force underneath (busy_timeout). Without
    the lock file (``fd`` is ``None``) there is nothing to hold.
    """
    if fd is None:
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


def _open_lock(path: Path) -> int | None:
    """The write-lock file's descriptor; ``None`` (SQLite's locking alone) if unavailable.

    Opened read-only: ``flock`` needs no write access, so a ``sluice queue``
    run by root and the daemon's own user can share a file either created.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, SPOOL_FILE_MODE)
    except OSError:
        return None
