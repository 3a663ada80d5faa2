"""The nodes of a fleet: one row per name (``spool.node``), with the holder's heartbeat.

Several daemons on one shared store (PostgreSQL) claim from one queue, each
under its own name, and a lease names the node holding it
(``recipients.lease_node``). The ``nodes`` table says which process holds
each name and when it last beat; ``relay/store/membership.py`` keeps this
process's row fresh, and the lease sweep (``queue.requeue_expired_leases``)
reads it to tell a dead node's leases from a live one's.

Writer jobs take a ``Conn`` and readers a ``Reader`` (``relay/store/db.py``),
as every job module's; the SQL is ``sql/nodes.sql``, the same on both backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.store.db import Conn, Reader, Row
from relay.store.sql import QUERIES

__all__ = ["NodeRow", "beat", "join", "leave", "list_nodes", "row"]


@dataclass(frozen=True, slots=True)
class NodeRow:
    """A node of the fleet: its name, the process holding it, and its last heartbeat."""

    name: str
    pid: int
    started_at: float
    #: its last beat; 0 once it stopped cleanly (the name is free)
    heartbeat_at: float

    @classmethod
    def from_row(cls, r: Row) -> NodeRow:
        return cls(str(r["name"]), int(r["pid"]), float(r["started_at"]), float(r["heartbeat_at"]))

    @property
    def left(self) -> bool:
        """The node stopped cleanly (and gave its name back)."""
        return self.heartbeat_at == 0

    def alive(self, now: float, timeout: float) -> bool:
        """Whether the node beat within ``timeout`` seconds of ``now``."""
        return self.heartbeat_at >= now - timeout


def join(c: Conn, name: str, pid: int, now: float, stale_before: float, seen: float | None) -> bool:
    """Take ``name`` for process ``pid`` started at ``now``; False: a live holder has it.

    ``seen``: the holder's last beat the caller watched go quiet; that row is
    taken even if it is not stale yet by ``stale_before``.
    """
    params = {"name": name, "pid": pid, "now": now, "stale_before": stale_before, "seen": seen}
    return c.execute(QUERIES["node_join"], params).fetchone() is not None


def row(c: Conn, name: str) -> NodeRow | None:
    """The row of ``name``, read on the writer (fresh: the holder's last committed beat)."""
    found = c.execute(QUERIES["node_row"], {"name": name}).fetchone()
    return None if found is None else NodeRow.from_row(found)


def beat(c: Conn, name: str, pid: int, started_at: float, now: float) -> bool:
    """Record a heartbeat; False: the name was taken over by another process."""
    params = {"name": name, "pid": pid, "started_at": started_at, "now": now}
    return c.execute(QUERIES["node_beat"], params).fetchone() is not None


def leave(c: Conn, name: str, pid: int, started_at: float) -> None:
    """Give the name back (a clean stop): the next daemon of this name starts at once."""
    c.execute(QUERIES["node_leave"], {"name": name, "pid": pid, "started_at": started_at})


async def list_nodes(reader: Reader) -> list[NodeRow]:
    """Every node that ever joined, by name (the admin and the CLI may show them)."""
    return [NodeRow.from_row(r) for r in await reader.execute_fetchall(QUERIES["list_nodes"], {})]
