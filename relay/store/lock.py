"""The lock file beside the spool: one daemon per spool, and how others find it.

The daemon holds an exclusive ``flock`` on ``<spool>.lock`` for its lifetime
and writes its pid there; ``sluice reload`` reads the pid only while the lock
is really held, so a stale pid is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from relay.errors import SpoolLocked

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
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


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
