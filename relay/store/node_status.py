"""What a running daemon tells the other processes on its host: a small file beside its lock.

``sluice reload`` waits for the daemon's answer (``reload.id``,
``reload.error``), ``sluice sendmail`` finds the port it listens on
(``daemon.listen``), the provider commands compare the file the daemon runs
(``daemon.config_sha256``). These are facts about one process on one host,
read by processes on the same host. They used to live in the spool's
``meta`` table, which was right while a spool belonged to one host; on a
store shared by a fleet (``spool.url``, PostgreSQL) that table is every
node's, and one node's reload id or port would overwrite another's.

They live instead in ``<spool.path>.status`` (a JSON object), beside the
``.lock`` file that holds the daemon's pid, in the node's own state
directory, whichever backend holds the mail. A file rather than node-keyed
rows in the database, because of who reads it: ``sluice sendmail`` runs as
the application's user (www-data, cron), and ``sluice reload`` from an
operator's shell, neither of which may hold the database's password, and
both must work while the database is down (a reload is how an operator
fixes a config during an outage). The fleet-wide view of nodes is the
``nodes`` table's business, not this file's.

Only the daemon writes it (it holds the lock), by replacing the whole file
(a temp file and a rename), so a reader sees the old or the new object,
never half of one. Nothing in it needs to survive a power cut: it is
written again at every start and reload, so there is no fsync.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["read_status", "status_path", "write_status"]


def status_path(spool_path: Path) -> Path:
    """The status file of the daemon running on ``spool_path`` (``<spool>.status``)."""
    return spool_path.with_name(spool_path.name + ".status")


def _read_all(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def read_status(spool_path: Path, key: str) -> str | None:
    """One value the daemon recorded, or None (no daemon ever ran here, unreadable, no key).

    Blocking, and cheap: for ``sluice reload``, ``sluice sendmail`` and the CLI.
    """
    return _read_all(status_path(spool_path)).get(key)


def write_status(spool_path: Path, values: Mapping[str, str], *, fresh: bool = False) -> None:
    """Set ``values`` in the status file (kept: the others; ``fresh``: none of them).

    Blocking (run it in a thread). The file is ``0640``, as the lock beside it.

    Raises:
        OSError: the directory cannot be written (a full disk): the caller
            decides whether that matters.
    """
    path = status_path(spool_path)
    merged = {} if fresh else _read_all(path)
    merged.update(values)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
