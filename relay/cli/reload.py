"""Reaching a running daemon from another process: ``sluice reload``.

The daemon holds an exclusive ``flock`` on ``<spool>.lock`` and writes its pid
there (``relay.daemon.spool_lock``); after each reload it records the outcome
in its status file beside it (``reload.id``, ``reload.error``;
``relay/store/node_status.py``). So a reload request is: find the pid (only if
the lock is really held, so a stale pid is never signalled), send SIGHUP, and
wait until ``reload.id`` changes. Both files are this host's: no database is
read, so it works on a fleet's PostgreSQL store too, and while it is down.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from relay.store.lock import daemon_pid
from relay.store.node_status import read_status

__all__ = ["ReloadResult", "other_config", "request_reload"]


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
    before = read_status(spool_path, "reload.id")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + wait
    config = read_status(spool_path, "daemon.config")
    while time.monotonic() < deadline:
        current = read_status(spool_path, "reload.id")
        if current is not None and current != before:
            error = read_status(spool_path, "reload.error") or None
            return ReloadResult(pid, True, error, config)
        time.sleep(0.05)
    return ReloadResult(pid, False, None, config)


def other_config(result: ReloadResult, ours: Path) -> tuple[Path, Path] | None:
    """(the daemon's file, ours), both resolved, when the daemon reads another file.

    Compared resolved: the daemon may have been started from another directory
    with a relative path, and "reads x.yaml, not x.yaml" would say nothing.
    """
    if not result.daemon_config:
        return None
    theirs, mine = Path(result.daemon_config).resolve(), ours.resolve()
    return None if theirs == mine else (theirs, mine)
