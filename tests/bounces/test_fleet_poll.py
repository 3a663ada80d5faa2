"""The bounce mailbox in a fleet (#27): one node polls it, another takes over when it stops.

Two pollers on two nodes of one PostgreSQL store (tests/pg.py) against one
real IMAP server (a private Dovecot): only the holder of the ``bounces``
turn reads the folder; the other stands by, says so on its status, and
polls once the holder has stopped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from relay.bounces.poller import BouncePoller, MailboxState
from relay.store.spool import Spool
from tests.bounces.genuine import about, delivered
from tests.bounces.mailhost import Dovecot
from tests.bounces.test_mailbox import append, config_with, fixture, imap, mailbox_settings
from tests.conftest import eventually
from tests.pg import PgDatabase

__all__ = ["imap"]  # the fixture, imported for this module's tests

pytestmark = pytest.mark.slow


async def test_one_node_polls_the_bounce_mailbox_and_another_takes_over(
    imap: Dovecot, pg_db: PgDatabase, tmp_path: Path
) -> None:
    cfg = config_with(mailbox_settings(imap, poll_interval="0.3s"), tmp_path)
    a = await Spool.open(pg_db.settings(tmp_path / "a" / "spool.sqlite3", node="node-a"))
    b = await Spool.open(pg_db.settings(tmp_path / "b" / "spool.sqlite3", node="node-b"))
    pollers = {
        name: BouncePoller(spool.suppressions, lambda: cfg, fleet=spool)
        for name, spool in (("a", a), ("b", b))
    }
    stops = {name: asyncio.Event() for name in pollers}
    tasks = {name: asyncio.create_task(p.run(stops[name])) for name, p in pollers.items()}
    try:
        holder = await eventually(
            lambda: next((n for n, p in pollers.items() if p.status.last_ok_at), None)
        )
        (other,) = set(pollers) - {holder}
        await eventually(lambda: pollers[other].status.elsewhere)
        # The holder polls again and again; the other never does, and says why.
        first = pollers[holder].status.last_poll_at
        assert first is not None
        await eventually(lambda: (pollers[holder].status.last_poll_at or 0) > first)
        assert pollers[other].status.last_poll_at is None
        assert pollers[other].status.state is MailboxState.ELSEWHERE

        # A bounce about mail the fleet delivered is recorded once, by the holder.
        gmail, _ = await delivered(a, "nobody.here@gmail.com")
        await append(imap, about(fixture("gmail.eml"), gmail))

        async def recorded() -> bool:
            return len(await b.suppressions.bounces_of("nobody.here@gmail.com")) == 1

        await eventually(recorded)
        assert pollers[other].status.last_poll_at is None

        # The holder stops (its turn is given back): the other takes the mailbox over.
        stops[holder].set()
        await asyncio.wait_for(tasks[holder], 10)
        await eventually(lambda: pollers[other].status.last_ok_at is not None, within=15)
        assert pollers[other].status.state is MailboxState.OK
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)
        await a.aclose()
        await b.aclose()
