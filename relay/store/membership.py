"""This daemon's place in a fleet: take its node name at start, beat, give it back at stop.

On a shared store several daemons claim from one queue; a lease names the
node that holds it (``spool.node``), and the lease sweep of every other node
takes back a node's expired leases only once that node has stopped beating
(``queue.requeue_expired_leases``). Two live daemons under one name would
finish and take back each other's leases, so the second is refused at
start (``NodeNameInUse``), with the holder's pid and last beat.

A name whose holder still looks fresh may belong to a daemon of this name
that just died (``kill -9``, then an immediate restart by systemd): ``join``
watches the row; a beat means a live holder (refused at once), and a row
that stays quiet until it is stale (``spool.node_timeout``, the rule every
other node applies) is taken over. A clean stop clears the heartbeat, so the
next start does not wait (its beat is set to 0).

procrastinate's workers keep the same kind of row: a heartbeat every
``update_heartbeat_interval`` (10 s), stalled after ``stalled_worker_timeout``
(30 s): the defaults of ``spool.heartbeat`` and ``spool.node_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable

from relay.errors import SpoolError, SpoolLocked
from relay.store.nodes import NodeRow
from relay.store.spool import Spool

__all__ = ["Membership", "NodeNameInUse"]

log = logging.getLogger("sluice.fleet")


class NodeNameInUse(SpoolLocked):
    """Another live daemon holds this node name (``spool.node``) on the shared store."""


class Membership:
    """The node row of this process: ``join`` at start, ``run`` beats, ``leave`` at stop."""

    def __init__(
        self,
        spool: Spool,
        *,
        heartbeat: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
    ) -> None:
        self._spool = spool
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._clock = clock
        self.pid = os.getpid() if pid is None else pid
        #: when this process took the name (with ``pid``, what makes the row ours)
        self.started_at = 0.0
        self.joined = False

    @property
    def name(self) -> str:
        return self._spool.node

    async def join(self) -> None:
        """Take the node name, waiting out the row of a holder that may have just died.

        Raises:
            NodeNameInUse: a live daemon holds the name (it beat while we watched).
            SpoolError: the store cannot be written.
        """
        now = self._clock()
        if await self._take(now, seen=None):
            return
        first = await self._spool.node_row()
        if first is None or first.left:  # given back between the two reads
            if await self._take(self._clock(), seen=None):
                return
            raise self._in_use(await self._spool.node_row())
        wait = max(0.0, first.heartbeat_at + self._timeout - now)
        log.warning(
            "spool.node %s: the last daemon of this name (pid %d) beat %.0fs ago; "
            "waiting up to %.0fs for it to beat again or go stale (spool.node_timeout)",
            self.name,
            first.pid,
            max(0.0, now - first.heartbeat_at),
            wait,
        )
        deadline = time.monotonic() + wait
        step = max(0.05, min(1.0, self._heartbeat / 4))
        while True:
            current = await self._spool.node_row()
            if current != first:
                if current is not None and current.left:
                    if await self._take(self._clock(), seen=None):  # it stopped cleanly
                        return
                raise self._in_use(current)
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(step, max(0.0, deadline - time.monotonic())))
        if not await self._take(self._clock(), seen=first.heartbeat_at):
            raise self._in_use(await self._spool.node_row())
        log.warning(
            "spool.node %s: took the name over from pid %d, silent for spool.node_timeout",
            self.name,
            first.pid,
        )

    async def _take(self, now: float, *, seen: float | None) -> bool:
        got = await self._spool.node_join(
            self.pid, now, stale_before=now - self._timeout, seen=seen
        )
        if got:
            self.started_at = now
            self.joined = True
        return got

    def _in_use(self, holder: NodeRow | None) -> NodeNameInUse:
        if holder is None or holder.left:
            who = "another daemon"
        else:
            ago = max(0.0, self._clock() - holder.heartbeat_at)
            who = f"a live daemon (pid {holder.pid}, last heartbeat {ago:.0f}s ago)"
        return NodeNameInUse(
            f"spool.node {self.name!r} is held by {who} on this spool; "
            "give each daemon of a fleet its own spool.node"
        )

    async def run(self, on_lost: Callable[[], None]) -> None:
        """Beat every ``spool.heartbeat`` seconds until cancelled.

        A beat the store refuses (unreachable) is logged and tried again; a
        beat that finds the name held by another process (ours went stale and
        was taken over) calls ``on_lost`` once: this daemon must stop, as its
        leases now look like the other's.
        """
        failing = False
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                ours = await self._spool.node_beat(self.pid, self.started_at, self._clock())
            except SpoolError as exc:
                if not failing:
                    log.error("spool.node %s: cannot record a heartbeat: %s", self.name, exc)
                failing = True
                continue
            if failing:
                log.info("spool.node %s: heartbeat recorded again", self.name)
                failing = False
            if not ours:
                holder = await self._spool.node_row()
                pid = "?" if holder is None else str(holder.pid)
                log.error(
                    "spool.node %s was taken over by another daemon (pid %s) while this "
                    "one's heartbeat was late beyond spool.node_timeout; stopping",
                    self.name,
                    pid,
                )
                self.joined = False
                on_lost()
                return

    async def leave(self) -> None:
        """Give the name back (a clean stop); an error is logged, not raised."""
        if not self.joined:
            return
        self.joined = False
        with contextlib.suppress(SpoolError):
            await self._spool.node_leave(self.pid, self.started_at)
