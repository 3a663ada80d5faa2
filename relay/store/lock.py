"""The lock file beside the spool: one daemon per spool, and how others find it.

The daemon holds an exclusive ``flock`` on ``<spool>.lock`` for its lifetime
and writes its pid there; ``sluice reload`` reads the pid only while the lock
is really held, so a stale pid is never signalled.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from relay.errors import SpoolLocked
from relay.store.writer import reserve_path

__all__ = ["daemon_pid", "spool_lock"]


@contextlib.contextmanager
def spool_lock(spool_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` beside the spool for the daemon's lifetime.

    Raises:
        SpoolLocked: another process (another ``sluice serve``) holds it.
    """
    lock_path = spool_path.with_name(spool_path.name + ".lock")
    lock_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise SpoolLocked(
                f"spool {spool_path} is in use by another sluice process (pid {holder})"
            ) from None
        os.ftruncate(fd, 0)
        _write_pid(fd, spool_path)
        yield
    finally:
        os.close(fd)


def _write_pid(fd: int, spool_path: Path) -> None:
    """Write our pid into the lock file; on a full disk, give the spool's reserve back first.

    The daemon must start on a full disk (issue #23), and the pid is what
    ``sluice reload`` signals. The reserve file (``relay.store.writer``) is
    there for moments like this one; the spool makes it again once there is room.
    """
    pid = f"{os.getpid()}\n".encode()
    try:
        os.pwrite(fd, pid, 0)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        with contextlib.suppress(FileNotFoundError):
            reserve_path(spool_path).unlink()
        with contextlib.suppress(OSError):  # still no room: the lock alone holds
            os.pwrite(fd, pid, 0)


def daemon_pid(spool_path: Path) -> int | None:
    """The pid of the daemon holding the spool lock, or None if none holds it."""
    lock_path = spool_path.with_name(spool_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            # A shared probe: it fails only while a daemon holds the lock.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
