"""Contract: the limits a fleet holds together, reserved in the store (issue #27).

``counter_reserve``, ``rate_reserve``, ``block_provider`` and
``provider_blocks`` answer the same on every backend, and two stores open on
the same database (two nodes) asking at once never take more than the limit
between them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.config import SpoolSettings
from relay.store.spool import ProviderBlock, Spool

Opener = Callable[..., Awaitable[Spool]]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def open_node(spool_where: Path | SpoolSettings) -> AsyncIterator[Opener]:
    """``await open_node(clock=...)``: one more node's store on the test's one database."""
    opened: list[Spool] = []

    async def open_one(clock: Callable[[], float] | None = None) -> Spool:
        node = f"node-{len(opened)}"
        spool = await Spool.open(spool_where, clock=clock or time.time, node=node)
        opened.append(spool)
        return spool

    yield open_one
    for spool in opened:
        await spool.aclose()


async def test_counter_reserve_takes_what_fits_under_the_limit(open_node: Opener) -> None:
    s = await open_node()
    name = "provider:p:messages"
    assert await s.counter_reserve(name, "2026-12-07", "2026-12-07", 3, 5) == 3
    assert await s.counter_reserve(name, "2026-12-07", "2026-12-07", 3, 5) == 2  # partly
    assert await s.counter_reserve(name, "2026-12-07", "2026-12-07", 1, 5) == 0
    assert await s.counter_get(name, "2026-12-07") == 5
    # given back as before: a negative increment, and the units fit again
    await s.counter_add(name, "2026-12-07", -2)
    assert await s.counter_reserve(name, "2026-12-07", "2026-12-07", 4, 5) == 2
    # another day is another window
    assert await s.counter_reserve(name, "2026-12-08", "2026-12-08", 4, 5) == 4


async def test_counter_reserve_sums_the_windows_from_oldest_on(open_node: Opener) -> None:
    s = await open_node()
    name = "provider:p:messages:10m"
    await s.counter_add(name, "2026-12-06T10:00", 4)  # left the window
    await s.counter_add(name, "2026-12-06T19:50", 3)  # still in it
    oldest = "2026-12-06T19:50"
    assert await s.counter_reserve(name, "2026-12-07T19:40", oldest, 10, 10) == 7
    assert await s.counter_since(name, oldest) == {"2026-12-06T19:50": 3, "2026-12-07T19:40": 7}
    assert await s.counter_reserve("provider:other", "2026-12-07T19:40", oldest, 2, 10) == 2


async def test_two_nodes_reserving_at_once_never_pass_the_limit(open_node: Opener) -> None:
    nodes = [await open_node(), await open_node()]
    name, day, limit = "provider:p:recipients", "2026-12-07", 37

    async def take(s: Spool) -> int:
        got = 0
        for _ in range(40):
            got += await s.counter_reserve(name, day, day, 1, limit)
        return got

    grants = await asyncio.gather(*(take(s) for s in nodes for _ in range(3)))
    assert sum(grants) == limit
    assert await nodes[0].counter_get(name, day) == limit


async def test_rate_reserve_is_one_bucket_for_every_node(open_node: Opener) -> None:
    clock = Clock(1_000_000.0)
    a, b = await open_node(clock), await open_node(clock)
    rate = {"per_second": 2.0, "capacity": 2.0, "max_wait": 0.0}
    first = await a.rate_reserve("provider:p", want=1, **rate)
    second = await b.rate_reserve("provider:p", want=5, **rate)
    assert (first.wait, first.got) == (0.0, 1)
    assert (second.wait, second.got) == (0.0, 1)  # one token was left, on the other node
    refused = await a.rate_reserve("provider:p", want=1, **rate)
    assert refused.got == 0 and refused.wait == pytest.approx(0.5)
    # Waiting for a token is a reservation too: it comes in its turn.
    queued = await b.rate_reserve("provider:p", want=1, per_second=2.0, capacity=2.0, max_wait=2)
    assert queued.got == 1 and queued.wait == pytest.approx(0.5)
    clock.now += 10  # idle: full again, not more than full
    assert (await a.rate_reserve("provider:p", want=9, **rate)).got == 2
    assert (await a.rate_reserve("provider:other", want=9, **rate)).got == 2


async def test_a_provider_block_lasts_to_its_latest_end(open_node: Opener) -> None:
    clock = Clock(5_000.0)
    a, b = await open_node(clock), await open_node(clock)
    assert await b.provider_blocks() == {}
    block = ProviderBlock(
        until=5_060.0, reason="cooling down after 3 failures", since=5_000.0, node="a"
    )
    assert await a.block_provider("p", block)
    assert await b.provider_blocks() == {"p": block}
    shorter = ProviderBlock(until=5_030.0, reason="shorter", since=5_000.0, node="b")
    assert not await b.block_provider("p", shorter)  # an earlier end never shortens it
    longer = ProviderBlock(until=5_120.0, reason="paused", since=5_001.0, node="b")
    assert await b.block_provider("p", longer)
    assert await a.provider_blocks() == {"p": longer}
    clock.now = 5_120.0
    assert await a.provider_blocks() == {}  # over by itself


async def test_nodes_taking_several_limits_at_once_never_deadlock(open_node: Opener) -> None:
    """Each node's group commit holds the limits its batch took: none may wait for another's.

    With waiting locks, three nodes reserving on three providers in random
    order deadlocked (PostgreSQL failed a third of the reservations so).
    """
    nodes = [await open_node() for _ in range(3)]
    taken: dict[str, int] = {}
    rate = {"per_second": 1e6, "capacity": 1e6, "max_wait": 2.0}

    async def worker(s: Spool, rng: random.Random) -> None:
        for _ in range(30):
            key = rng.choice("ABC")
            if rng.random() < 0.5:
                got = await s.counter_reserve(f"p:{key}", "w", "w", 1, 10**9)
                taken[key] = taken.get(key, 0) + got
            elif rng.random() < 0.5:
                await s.counter_return(f"p:{key}", "w", 0)
            else:
                assert (await s.rate_reserve(f"p:{key}", want=1, **rate)).got == 1

    seeds = random.Random(27)
    await asyncio.gather(
        *(worker(s, random.Random(seeds.random())) for s in nodes for _ in range(4))
    )
    for key, n in taken.items():
        assert await nodes[0].counter_get(f"p:{key}", "w") == n
