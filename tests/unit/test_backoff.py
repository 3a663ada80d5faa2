"""The one back-off formula (relay.backoff), and each caller's own parameters over it."""

from __future__ import annotations

import random

import pytest

from admin.auth import LoginLimiter
from relay.backoff import exponential, jittered
from relay.config import NotifySettings
from relay.notify.webhooks import backoff as webhook_backoff


@pytest.mark.parametrize(
    ("n", "first", "cap", "delay"),
    [
        (1, 60, 3600, 60),
        (2, 60, 3600, 120),
        (3, 60, 3600, 240),
        (6, 60, 3600, 1920),
        (7, 60, 3600, 3600),
        (0, 60, 3600, 60),  # below 1 counts as the first retry
        (-5, 1, 60, 1),
        (10_000, 1, 60, 60),  # no OverflowError far past the cap
        (3, 0.5, 100, 2),
        (4, 5, 5, 5),  # a cap equal to the first delay: constant
    ],
)
def test_first_doubles_up_to_the_cap(n: int, first: float, cap: float, delay: float) -> None:
    assert exponential(n, first=first, cap=cap) == delay


def test_jitter_spreads_both_ways_within_its_fraction_after_the_cap() -> None:
    rng = random.Random(3)
    delays = [exponential(20, first=1, cap=100, jitter=0.25, rng=rng) for _ in range(500)]
    assert 75 <= min(delays) < 85
    assert 115 < max(delays) <= 125
    assert len(set(delays)) > 400


def test_jitter_without_an_rng_is_refused() -> None:
    with pytest.raises(ValueError, match="rng"):
        exponential(1, first=1, cap=2, jitter=0.1)


def test_a_given_rng_is_drawn_once_even_without_jitter() -> None:
    """So a seeded sequence is the same whether or not jitter is configured."""
    a, b = random.Random(5), random.Random(5)
    assert jittered(10.0, 0.0, a) == 10.0
    b.uniform(-1.0, 1.0)
    assert a.random() == b.random()


def test_never_below_zero() -> None:
    assert jittered(10.0, 2.0, random.Random(0)) >= 0.0
    assert jittered(-1.0, 0.0, None) == 0.0


@pytest.mark.parametrize(("failures", "delay"), [(1, 10), (2, 20), (3, 40), (20, 900)])
def test_webhooks_keep_their_parameters(failures: int, delay: float) -> None:
    settings = NotifySettings(webhook_first_delay=10, webhook_max_delay=900)
    assert webhook_backoff(failures, settings) == delay


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0), (4, 0), (5, 5), (6, 10), (7, 20), (8, 40), (9, 60), (99, 60)]
)
def test_the_login_limiter_keeps_its_free_tries_and_cap(failures: int, delay: float) -> None:
    assert LoginLimiter().delay(failures) == delay
