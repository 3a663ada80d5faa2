"""A skip learnt from the fleet: how ``Health`` takes it, and how often ``Fleet`` reads.

Pure parts of the shared circuit breaker (issue #27); the stores and the
processes are tests/store/test_shared_limits.py and tests/e2e/test_fleet_limits.py.
"""

from __future__ import annotations

from relay.errors import SpoolError
from relay.model import ProviderHealth
from relay.outbound.health import Health
from relay.outbound.shared_limits import SYNC_EVERY, Fleet
from relay.store.spool import ProviderBlock, RateGrant


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_adopted_block_skips_the_provider_with_the_fleets_reason() -> None:
    h = Health()
    h.adopt(160.0, "skipped by the fleet: cooling down (on node a)", 100.0, now=110.0)
    assert h.blocked_until(110.0) == 160.0
    assert h.own_blocked_until(110.0) is None  # not this node's to tell the fleet
    view = h.view(110.0)
    assert view.state is ProviderHealth.COOLDOWN
    assert view.reason == "skipped by the fleet: cooling down (on node a)"
    assert view.since == 100.0
    h.adopt(150.0, "an earlier end", 101.0, now=111.0)  # never shortens it
    assert h.blocked_until(111.0) == 160.0 and "node a" in h.why_blocked(111.0)
    assert h.blocked_until(160.0) is None  # over by itself
    assert h.view(160.0).state is not ProviderHealth.COOLDOWN


def test_a_block_of_the_nodes_own_speaks_first() -> None:
    h = Health()
    h.adopt(200.0, "skipped by the fleet: x (on node a)", 100.0, now=100.0)
    h.record_failure("4.4.1 connection refused", 101.0, threshold=1, cooldown=30.0)
    assert h.own_blocked_until(101.0) == 131.0
    assert h.blocked_until(101.0) == 200.0  # the later of the two
    assert "connection refused" in h.why_blocked(101.0)
    assert "node a" in h.why_blocked(140.0)  # its own ended; the fleet's holds


class Store:
    """A fleet store that counts the reads of the blocks (and can fail them)."""

    def __init__(self) -> None:
        self.reads = 0
        self.fail = False
        self.blocks: dict[str, ProviderBlock] = {}

    async def provider_blocks(self) -> dict[str, ProviderBlock]:
        self.reads += 1
        if self.fail:
            raise SpoolError("spool unreachable")
        return dict(self.blocks)

    async def block_provider(self, provider: str, block: ProviderBlock) -> bool:
        self.blocks[provider] = block
        return True

    async def rate_reserve(
        self, name: str, *, per_second: float, capacity: float, want: int, max_wait: float
    ) -> RateGrant:
        raise AssertionError("not used here")

    async def counter_reserve(
        self, name: str, window: str, oldest: str, want: int, limit: int
    ) -> int:
        raise AssertionError("not used here")

    async def counter_return(self, name: str, window: str, n: int) -> None:
        raise AssertionError("not used here")

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int:
        raise AssertionError("not used here")

    async def counter_get(self, name: str, window: str) -> int:
        raise AssertionError("not used here")

    async def counter_since(self, name: str, window: str) -> dict[str, int]:
        raise AssertionError("not used here")

    async def counter_prune(self, name: str, before: str) -> None:
        raise AssertionError("not used here")


async def test_the_fleets_blocks_are_read_at_most_once_per_sync_period() -> None:
    store, clock = Store(), Clock(0.0)
    fleet = Fleet(store, "b", clock=clock)
    assert await fleet.blocks() == {}
    await Fleet(store, "a").block("p", 90.0, "cooling down", 30.0)
    clock.now += SYNC_EVERY / 2
    assert await fleet.blocks() == {}  # not read again yet
    clock.now += SYNC_EVERY / 2
    assert (await fleet.blocks())["p"].node == "a"
    assert store.reads == 2
    store.fail = True  # the store away: the last answer stands
    clock.now += SYNC_EVERY
    assert (await fleet.blocks())["p"].until == 90.0
