"""The store's rate (GCRA over one stored time) answers as the in-memory bucket does.

A fleet's rate is a theoretical arrival time in the store
(``relay.store.limits.gcra``); one node's is ``TokenBucket``. The same
sequence of requests at the same instants must get the same waits and
counts from both, or a provider's rate would mean two things.
"""

from __future__ import annotations

import random

import pytest

from relay.config import Rate
from relay.outbound.limits import TokenBucket
from relay.store.limits import gcra


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rate", [Rate(3, 1.0), Rate(10, 60.0), Rate(50, 1.0), Rate(1, 1.0)])
def test_gcra_gives_what_the_token_bucket_gives(rate: Rate) -> None:
    rng = random.Random(f"gcra-{rate}")
    clock = Clock(1_000_000.0)
    bucket = TokenBucket(rate, clock=clock)
    tat: float | None = None
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.1, 0.5, 2.0]) / rate.per_second
        want, max_wait = rng.randint(1, 8), rng.choice([0.0, 0.5, 2.0, 30.0])
        expected = bucket.reserve_many(want, max_wait)
        grant, new_tat = gcra(tat, clock.now, rate.per_second, bucket.capacity, want, max_wait)
        if expected is None:
            assert grant.got == 0
            assert grant.wait > max_wait
            assert grant.wait == pytest.approx(bucket.next_free())
        else:
            assert grant.wait == pytest.approx(expected[0])
            assert grant.got == expected[1]
            tat = new_tat


def test_a_new_bucket_is_full_and_an_idle_one_fills_to_capacity_only() -> None:
    grant, tat = gcra(None, 100.0, 2.0, 2.0, 5, 0.0)
    assert (grant.wait, grant.got) == (0.0, 2)
    refused, _ = gcra(tat, 100.0, 2.0, 2.0, 1, 0.1)
    assert refused.got == 0 and refused.wait == pytest.approx(0.5)
    later, _ = gcra(tat, 1000.0, 2.0, 2.0, 5, 0.0)  # long idle: still two, not hundreds
    assert (later.wait, later.got) == (0.0, 2)
