"""The retry policy is pure: table-driven tests with a seeded rng."""

from __future__ import annotations

import random

import pytest

from relay.config import RetrySettings
from relay.model import Delivered, PermFailure, RecipientStatus, TempFailure
from relay.outbound.retry import backoff, decide

POLICY = RetrySettings(first_delay=60, max_delay=3600, give_up_after=5 * 86400, jitter=0)
T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(1, 60), (2, 120), (3, 240), (6, 1920), (7, 3600), (50, 3600), (10_000, 3600)],
)
def test_backoff_doubles_up_to_the_maximum(attempts: int, delay: float) -> None:
    assert backoff(attempts, POLICY, random.Random(1)) == delay


def test_jitter_stays_within_its_fraction() -> None:
    policy = POLICY.model_copy(update={"jitter": 0.1})
    rng = random.Random(7)
    delays = {backoff(3, policy, rng) for _ in range(200)}
    assert min(delays) >= 240 * 0.9
    assert max(delays) <= 240 * 1.1
    assert len(delays) > 100  # really random, not a constant


@pytest.mark.parametrize(
    ("outcome", "status", "next_at"),
    [
        (Delivered("a@x", 250, "250 ok"), RecipientStatus.SENT, None),
        (PermFailure("a@x", 550, "550 5.1.1 no such user"), RecipientStatus.FAILED, None),
        (TempFailure("a@x", 451, "451 later"), RecipientStatus.DEFERRED, T0 + 100 + 120),
        # a provider hint longer than our back-off wins
        (TempFailure("a@x", 451, "later", retry_after=900), RecipientStatus.DEFERRED, T0 + 1000),
        # a shorter hint does not shorten the back-off
        (TempFailure("a@x", 451, "later", retry_after=5), RecipientStatus.DEFERRED, T0 + 220),
    ],
)
def test_decide(outcome, status, next_at) -> None:  # type: ignore[no-untyped-def]
    d = decide(outcome, attempts=2, since=T0, now=T0 + 100, policy=POLICY, rng=random.Random(1))
    assert d.status is status
    assert d.next_attempt_at == next_at


def test_temporary_failure_after_give_up_time_expires() -> None:
    now = T0 + POLICY.give_up_after
    d = decide(
        TempFailure("a@x", 451, "x"),
        attempts=9,
        since=T0,
        now=now,
        policy=POLICY,
        rng=random.Random(1),
    )
    assert d.status is RecipientStatus.EXPIRED
    assert d.next_attempt_at is None


def test_last_retry_is_pulled_in_to_the_deadline() -> None:
    deadline = T0 + POLICY.give_up_after
    now = deadline - 10
    d = decide(
        TempFailure("a@x", 451, "x"),
        attempts=30,
        since=T0,
        now=now,
        policy=POLICY,
        rng=random.Random(1),
    )
    assert d.status is RecipientStatus.DEFERRED
    assert d.next_attempt_at == deadline
