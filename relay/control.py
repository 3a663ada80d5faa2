"""Reaching a running daemon from another process: ``sluice reload``.

The daemon holds an exclusive ``flock`` on ``<spool>.lock`` and writes its pid
there (``relay.daemon.spool_lock``); after each reload it records the outcome
in the spool's ``meta`` table (``reload.id``, ``reload.error``). So a reload
request is: find the pid (only if the lock is really held, so a stale pid is
never signalled), send SIGHUP, and wait until ``reload.id`` changes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from relay.spool import read_meta

__all__ = ["ReloadResult", "daemon_pid", "request_reload"]


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


@dataclass(frozen=True)
class ReloadResult:
    pid: int
    confirmed: bool
    error: str | None = None
    daemon_config: str | None = None


def request_reload(spool_path: Path, *, wait: float = 10.0) -> ReloadResult:
    """Send SIGHUP to the running daemon and wait for it to record the outcome.

    Raises:
        ProcessLookupError: no daemon is running on this spool.
        PermissionError: the caller may not signal the daemon.
    """
    pid = daemon_pid(spool_path)
    if pid is None:
        raise ProcessLookupError(errno.ESRCH, f"no sluice daemon is running on {spool_path}")
    before = read_meta(spool_path, "reload.id")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    config = read_meta(spool_path, "daemon.config")
    while time.monotonic() < deadline:
        current = read_meta(spool_path, "reload.id")
        if current is not None and current != before:
            error = read_meta(spool_path, "reload.error") or None
            return ReloadResult(pid, True, error, config)
        time.sleep(0.05)
    return ReloadResult(pid, False, None, config)
