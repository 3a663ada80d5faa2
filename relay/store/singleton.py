"""Work only one node may do at a time: a named turn, and the loop that waits for it.

Several Sluice nodes may share one store (PostgreSQL, issue #27). Most of
their work is safe to do side by side: each claims its own recipients. Some
is not: polling the bounce mailbox (two readers would race for the same
messages), posting one endpoint's webhooks (they must arrive in order, one
at a time), pruning, and the sweeps that expire held mail and ended pauses
(harmless twice, but wasted and audited twice). Such work is done by the
node that holds its **turn**: ``async with spool.singleton("bounces") as
turn:``, and ``if turn:`` the work is this node's for as long as the block
lasts and ``turn.lost`` is not set.

On SQLite only one daemon opens a spool (the lock file beside it), so every
turn is granted at once (``Granted``). On PostgreSQL a turn is a session
advisory lock held on a connection of its own (``relay/store/pg/turns.py``):
it ends when the holder's session ends, so a node killed with ``-9`` gives
its turns up at once and a host that vanished gives them up when the server's
keep-alive gives up on it; another node then takes the turn at its next try.

``one_node_at_a_time`` is the loop every such duty runs in: try for the turn,
do the work while it is held, try again every ``retry`` seconds while another
node holds it. (A leader election library, or a lease row renewed by a
heartbeat, would do the same with a clock to tune; the database already knows
when a session ends.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = [
    "TAKEOVER_EVERY",
    "Fleet",
    "Granted",
    "Turn",
    "Turns",
    "lock_key",
    "one_node_at_a_time",
]

log = logging.getLogger("sluice.fleet")

#: how often a node that does not hold a turn tries for it again (seconds): at
#: most this long after its holder died, another node takes the work over
TAKEOVER_EVERY = 5.0


class Turn:
    """This node's turn at one named piece of work (true while it is this node's).

    ``lost`` is set when a turn that was granted ends without the holder
    giving it up (its connection to the database broke): the work must stop,
    another node may have taken it.
    """

    def __init__(self, name: str, *, granted: bool, error: str = "") -> None:
        self.name = name
        self.granted = granted
        #: why the database could not be asked (not granted then); "" when it answered
        self.error = error
        self.lost = asyncio.Event()

    def __bool__(self) -> bool:
        return self.granted and not self.lost.is_set()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "held" if self.granted else "elsewhere"
        return f"Turn({self.name!r}, {state})"


class Turns(Protocol):
    """Who hands out turns: the store's backend (``Spool.singleton`` asks it)."""

    def hold(self, name: str) -> AbstractAsyncContextManager[Turn]: ...

    async def aclose(self) -> None: ...


class Granted:
    """A store no other node shares (SQLite): every turn is this node's, at once."""

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[Turn]:
        yield Turn(name, granted=True)

    async def aclose(self) -> None:
        return None


def lock_key(name: str) -> int:
    """The advisory lock key of a turn's name: a signed 64-bit number, the same on every node.

    A digest, not PostgreSQL's ``hashtext``, whose values are not promised to
    stay the same across server versions. Locks are per database, so two
    fleets in two databases of one server never meet.
    """
    digest = hashlib.blake2b(f"sluice turn {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Fleet(Protocol):
    """What ``one_node_at_a_time`` needs of the spool: its turns, and whether it is shared."""

    def singleton(self, name: str) -> AbstractAsyncContextManager[Turn]: ...

    @property
    def shared(self) -> bool: ...


async def one_node_at_a_time(
    spool: Fleet,
    name: str,
    stop: asyncio.Event,
    work: Callable[[asyncio.Event], Awaitable[None]],
    *,
    what: str,
    retry: float = TAKEOVER_EVERY,
    standby: Callable[[bool], None] | None = None,
) -> None:
    """Run ``work(until)`` whenever this node holds the turn ``name``, until ``stop``.

    ``until`` is set when ``stop`` is, or when the turn is lost; ``work``
    returns soon after (it is the ``stop`` event of a loop that already
    stops on one). When ``work`` returns on its own (its endpoint was
    removed from the config, say), so does this. ``what`` says what the work
    is in the log lines of a shared store ("polls the bounce mailbox"); a
    SQLite spool logs nothing here, having no one to share with.
    ``standby`` hears ``True`` while another node holds the turn, ``False``
    once this node has it (for a status page).
    """
    said = ""  # what the log last said about a turn not granted ("" after holding it)
    while not stop.is_set():
        async with spool.singleton(name) as turn:
            if standby is not None:
                standby(not turn)
            if turn:
                said = ""
                if spool.shared:
                    log.info("this node now %s for the fleet", what, extra={"event": "fleet"})
                until = asyncio.Event()
                watch = asyncio.ensure_future(_either(stop, turn.lost, until))
                try:
                    await work(until)
                finally:
                    watch.cancel()
                if not turn.lost.is_set():
                    return  # stopping, or the work is over
                log.warning(
                    "this node lost its turn (its database session ended) and no longer %s",
                    what,
                    extra={"event": "fleet"},
                )
                continue  # try again at once: nobody may have taken it yet
            # Said once per change, not at every try.
            if turn.error and said != turn.error:
                log.warning(
                    "cannot learn from the database which node %s: %s",
                    what,
                    turn.error,
                    extra={"event": "fleet"},
                )
            elif not turn.error and said != "elsewhere":
                log.info("another node %s", what, extra={"event": "fleet"})
            said = turn.error or "elsewhere"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(retry):
                await stop.wait()


async def _either(a: asyncio.Event, b: asyncio.Event, then: asyncio.Event) -> None:
    """Set ``then`` as soon as ``a`` or ``b`` is set."""
    waits = {asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        then.set()
    finally:
        for w in waits:
            w.cancel()
