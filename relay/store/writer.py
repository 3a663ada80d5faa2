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

A full disk must not wedge the spool (issue #23): ``DiskSpace`` watches the
spool's file system (``os.statvfs``, a cheap system call) and keeps a reserve
file beside the spool. The moment a write fails for want of room, the writer
gives the reserve back and truncates the WAL (``wal_checkpoint(TRUNCATE)``),
so the copy itself has room to run; then, from its own thread, it looks for
room every ``_PROBE_EVERY`` seconds and, as soon as there is some, truncates
the WAL again and makes the reserve anew. Nobody has to step in, whatever the
size of the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
    "DiskSpace",
    "Job",
    "WriteHealth",
    "Writer",
    "connect",
    "is_disk_full",
    "reserve_path",
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
#: After a reset, a WAL file larger than this is truncated back to it. Small,
#: so that the WAL gives its room back to the file system once copied: a WAL
#: left at its high-water mark held on to space a full disk needed. With the
#: checkpointer running it restarts the WAL every 1,000 pages (4 MB), so this
#: costs nothing in steady state.
_WAL_SIZE_LIMIT = 8 * 1024 * 1024
#: A failing checkpointer waits twice as long after each failure, up to this.
_CHECKPOINT_BACKOFF_MAX = 30.0
#: ... and says so in the log at most this often while it keeps failing.
_CHECKPOINT_LOG_EVERY = 60.0
#: While the disk is full, how often the writer (and a failing checkpointer)
#: look for room again: one ``statvfs`` call, so it can be often.
_PROBE_EVERY = 0.1
#: The reserve file's size, at most (and at most 1/16 of the file system): a
#: few MB is what a checkpoint of a capped WAL needs to grow the database by.
RESERVE_BYTES = 8 * 1024 * 1024
#: The disk has room again when this much is free beyond the reserve.
_ROOM_BYTES = 1024 * 1024
#: "spool disk full" and "room again" are logged at most this often.
_FULL_LOG_EVERY = 60.0
#: SQLite's primary result code for "database or disk is full".
_SQLITE_FULL = 13
_FULL_TEXT = "database or disk is full"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the database's page cap) is full.

    SQLite turns ENOSPC on a write into SQLITE_FULL; a ``SpoolError`` carries
    its text; ``OSError`` ENOSPC comes from files written directly.
    """
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL:
            return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return _FULL_TEXT in str(exc)


def reserve_path(spool: Path) -> Path:
    """The reserve file beside the spool (``<spool>.reserve``)."""
    return spool.with_name(spool.name + ".reserve")


class DiskSpace:
    """The spool's file system: its free space, and a reserve file given back when it fills.

    Databases keep such a reserve (a pre-allocated file) so that the work
    that frees space, here the WAL checkpoint that truncates the WAL, still
    has room to run on a full disk. It is allocated for real
    (``posix_fallocate``, then ``fsync``), so the space is the spool's and
    not a sparse promise. Only the daemon keeps one; every writer uses
    ``free`` and ``has_room`` to see when a full disk has room again.
    """

    def __init__(self, spool: Path, *, reserve: bool = True) -> None:
        self._dir = spool.parent
        self.path = reserve_path(spool)
        self._reserve = reserve
        #: bytes of reserve this process gave back since it last made one (for the log)
        self.given_back = 0

    def free(self) -> int:
        """Bytes free for this process on the spool's file system (0 if unknown)."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize

    def reserve_size(self) -> int:
        """The reserve for this file system: ``RESERVE_BYTES``, at most 1/16 of it."""
        try:
            st = os.statvfs(self._dir)
        except OSError:
            return RESERVE_BYTES
        return max(0, min(RESERVE_BYTES, st.f_blocks * st.f_frsize // 16))

    def nearly_full(self) -> bool:
        """Less than the margin free: a spool opened now could not take mail."""
        return self.free() < _ROOM_BYTES

    def has_room(self) -> bool:
        """Room for mail again: the reserve (when missing) and a margin fit.

        The same for every writer of the spool, the daemon's accept workers
        included: room that the daemon needs for its reserve is not room for mail.
        """
        need = _ROOM_BYTES + (0 if self.reserved() else self.reserve_size())
        return self.free() >= need

    def reserved(self) -> bool:
        """Whether the reserve file is in place."""
        return self.path.exists()

    def release(self) -> int:
        """Delete the reserve file; the bytes given back (0 if there was none).

        Any writer of the spool may give it back (an accept worker's write
        may be the one that finds the disk full); only the daemon makes it.
        """
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.error("cannot delete the spool's reserve file %s: %s", self.path, exc)
            return 0
        self.given_back += size
        return size

    def make(self) -> bool:
        """Make the reserve file if missing and it fits with room to spare; whether it is there.

        Written under a temporary name and renamed, so that a half-made
        reserve is never taken for one.
        """
        if not self._reserve:
            return False
        if self.path.exists():
            return True
        size = self.reserve_size()
        if size <= 0 or self.free() < size + _ROOM_BYTES:
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, SPOOL_FILE_MODE)
            try:
                os.posix_fallocate(fd, 0, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(self.path)
            _fsync_dir(self._dir)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self.given_back = 0
        return True


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class WriteHealth:
    """How the spool's writes are going (replaced whole, so a reader sees one state).

    ``failing`` holds from a failed write (a job's ``sqlite3.OperationalError``
    such as "database or disk is full", or a failed ``COMMIT``) until a later
    commit that changed something succeeds: an empty commit succeeds even on
    a full disk, so it proves nothing. It also holds while ``disk_full``: from
    a write that failed for want of room until the writer finds room again.
    """

    last_error: str | None = None
    last_error_at: float | None = None
    last_ok_at: float | None = None
    errors: int = 0
    #: the spool's disk is full: mail is refused (452) until there is room again
    disk_full: bool = False

    @property
    def failing(self) -> bool:
        if self.disk_full:
            return True
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
    # Statement journals (an UPDATE of several rows inside a transaction, a
    # job's SAVEPOINT) in memory, in small pieces. With SQLite's default they
    # spill to files in /var/tmp (8-11 a second under load), so a full /var/tmp
    # failed spool commits with "database or disk is full" while the spool's
    # own disk had room, and set off Writer._enter_full (the full-disk mode) for the
    # wrong file system (tests/store/test_temp_files.py). In some heap states
    # the default also cost a claim's UPDATE 130-200 us instead of 22-28 (a
    # 64 KiB buffer per journal, freed to the kernel and faulted in again);
    # end to end, no difference showed (bench/HISTORY.md, round 3).
    # A writer connection makes no temporary tables and runs no VACUUM; the
    # readers (the admin's lists, which may sort) keep SQLite's default.
    conn.execute("PRAGMA temp_store=MEMORY")
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
        space: DiskSpace | None = None,
        full: bool = False,
    ) -> None:
        """``space``: the spool's file system, watched after a write fails for want
        of room; ``full``: the disk was already full when the spool was opened."""
        self._conn = conn
        self._lock_fd = _open_lock(lock_path) if lock_path is not None else None
        self._loop = loop
        self._clock = clock
        self._space = space
        #: when "spool disk full" was last logged, and whether "room again" is still owed
        self._full_logged_at: float | None = None
        self._full_said = False
        #: the last write failure and success, for ``/healthz``
        self.health = WriteHealth()
        if full:
            self._enter_full(f"no room at start-up ({_mb(self._free())} free)")
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

    @property
    def disk_full(self) -> bool:
        """Whether the last write failed for want of room and none has been found since."""
        return self.health.disk_full

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._jobs and not self._closing:
                    # While the disk is full, wake up to look for room even
                    # when no job comes: recovery must not wait for mail.
                    self._cond.wait(_PROBE_EVERY if self.health.disk_full else None)
                if not self._jobs and self._closing:
                    break
                pending = bool(self._jobs)
            if self.health.disk_full:
                with _flocked(self._lock_fd):
                    self._look_for_room()
            if not pending:
                continue
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

    def _free(self) -> int:
        return self._space.free() if self._space is not None else 0

    def short_of_room(self) -> str | None:
        """Why the spool's file system has no room for mail now, else None (one ``statvfs``).

        Whatever process filled it: the daemon's own writes may all still fit
        while its accept workers' are refused. Blocking (a system call): call
        it from a thread.
        """
        if self._space is None or self._space.has_room():
            return None
        return f"{_mb(self._space.free())} free on its file system"

    def _enter_full(self, error: str) -> None:
        """A write failed for want of room: give the reserve back, truncate the WAL.

        Runs on the writer thread with the write lock held (or before the
        thread starts), so nobody writes in between. The WAL a failed write
        grew keeps its size after the rollback; only a TRUNCATE checkpoint
        gives that room back to the file system.
        """
        now = self._clock()
        was_full = self.health.disk_full
        if self._space is not None:
            self._space.release()
        released = self._space.given_back if self._space is not None else 0
        self._truncate_wal()
        h = self.health
        self.health = replace(
            h,
            disk_full=True,
            last_error=f"spool disk full: {error}",
            last_error_at=now,
            errors=h.errors + 1,
        )
        if was_full:
            return
        if self._full_logged_at is None or now - self._full_logged_at >= _FULL_LOG_EVERY:
            self._full_logged_at = now
            self._full_said = True
            log.error(
                "spool disk full (%s); gave back the %s reserve and truncated the WAL; "
                "refusing mail (452) until there is room (%s free now)",
                error,
                _mb(released),
                _mb(self._free()),
                extra={"event": "disk_full"},
            )

    def _look_for_room(self) -> None:
        """One look at the file system; with room again, truncate the WAL, remake the reserve."""
        space = self._space
        if space is None or not space.has_room():
            return
        # Best effort: a reader in the way only delays it to the checkpointer's
        # next round, and must not keep mail out while there is room.
        self._truncate_wal()
        reserved = space.make()
        self.health = replace(self.health, disk_full=False)
        if not self._full_said:
            return  # flapping on the edge of full: neither is said more than once a minute
        self._full_said = False
        log.warning(
            "spool disk has room again (%s free): taking mail%s",
            _mb(space.free()),
            "" if reserved else "; the reserve file could not be made yet",
            extra={"event": "disk_full"},
        )

    def _truncate_wal(self) -> bool:
        """Copy the WAL into the database and cut it to nothing; whether it all went.

        ``busy_timeout`` is shortened meanwhile: TRUNCATE waits for readers,
        and the writer thread must not hang on a slow one.
        """
        try:
            self._conn.execute("PRAGMA busy_timeout=1000")
            try:
                row = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                self._conn.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as exc:
            log.debug("truncating the WAL failed: %s", exc)
            return False
        return row is None or int(row[0]) == 0

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
        if failure is not None and self._space is not None and self._is_full(failure):
            self._enter_full(failure)
        elif failure is not None:
            h = self.health
            self.health = replace(
                h, last_error=failure, last_error_at=self._clock(), errors=h.errors + 1
            )
        elif self._conn.total_changes != changes:
            self.health = replace(self.health, last_ok_at=self._clock())
        for (_job, fut, _durable), (ok, value) in zip(batch, results, strict=True):
            self._loop.call_soon_threadsafe(resolve_future, fut, ok, value)

    def _is_full(self, failure: str) -> bool:
        """A failure for want of room: SQLite's words, or a disk with no room left.

        ENOSPC can also surface as an I/O error (an ``fsync``, the WAL index),
        hence the look at the file system itself.
        """
        return _FULL_TEXT in failure or (self._space is not None and not self._space.has_room())

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
        self._space = DiskSpace(path, reserve=False)
        #: the last failure was for want of room: look for room instead of waiting out the back-off
        self._full = False
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
            while not self._pause(delay):
                try:
                    self._round()
                except Exception as exc:  # sqlite3.Error, OSError: keep going, see above
                    self._close_conn()
                    self._full = is_disk_full(exc)
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
                self._full = False
                delay = self._interval
        finally:
            self._close_conn()
            self.health = replace(self.health, running=False)

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds; whether to stop.

        After a failure for want of room, the wait ends as soon as the file
        system has room again: the WAL must be copied back before new mail
        fills that room, not after a back-off of up to 30 s.
        """
        if not self._full:
            return self._stop.wait(delay)
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            if self._stop.wait(min(left, _PROBE_EVERY)):
                return True
            if self._space.has_room():
                return False
        return False

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


def _mb(n: int) -> str:
    """Bytes as MB for the log (one decimal)."""
    return f"{n / 1_000_000:.1f} MB"


def resolve_future(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Answer a job's caller (on the event loop), unless it gave up waiting."""
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
