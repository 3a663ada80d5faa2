"""The scheduler's policy steps are pure: what becomes of a recipient after its offers."""

from __future__ import annotations

import pytest

from relay.model import ClaimedRecipient, Delivered, Outcome, PermFailure, Scope, TempFailure
from relay.outbound.providers import Unavailable
from relay.outbound.replies import no_smtputf8
from relay.outbound.scheduler import (
    LimitWait,
    Settled,
    batch_wait,
    expired_while_waiting,
    fate,
    health_skip,
    limit_wait,
)

NOW = 1_000_000.0
DAILY = Unavailable("a", "a: daily limit of 10 messages reached", NOW + 3600, limit=True)
RATE = Unavailable("b", "b: rate limit 1/s reached", NOW + 2, limit=True)
PAUSED = Unavailable("c", "c: paused at the provider's request: 421 busy", NOW + 300)
COOLING = Unavailable("d", "d: cooling down after 3 failures: refused", NOW + 60)


def rcpt(since: float = NOW - 10) -> ClaimedRecipient:
    return ClaimedRecipient("r@example.net", attempts=0, since=since)


def test_limit_wait_is_until_the_first_limit_reopens() -> None:
    got = limit_wait([DAILY, RATE])
    assert got == LimitWait(NOW + 2, f"4.7.0 waiting: {DAILY.reason}; {RATE.reason}")


def test_limit_wait_needs_every_skip_to_be_a_limit() -> None:
    assert limit_wait([DAILY, PAUSED]) is None
    assert limit_wait([]) is None


def test_expiry_while_waiting_for_a_limit() -> None:
    assert expired_while_waiting(NOW - 100, give_up_after=100, now=NOW)
    assert not expired_while_waiting(NOW - 99, give_up_after=100, now=NOW)


def test_health_skip_defers_until_the_shortest_pause() -> None:
    outcome, provider = health_skip("r@x", [PAUSED, COOLING], now=NOW)
    assert provider == "d"
    assert isinstance(outcome, TempFailure) and outcome.scope is Scope.PROVIDER
    assert outcome.retry_after == 60
    assert outcome.text == f"4.4.0 no provider available now: {PAUSED.reason}; {COOLING.reason}"
    # A pause already over (clock moved on) never asks for a negative wait.
    late = health_skip("r@x", [COOLING], now=NOW + 61).outcome
    assert isinstance(late, TempFailure) and late.retry_after == 0


def test_fate_waits_for_a_limit_without_an_attempt() -> None:
    got = fate(rcpt(), [], [DAILY, RATE], give_up_after=86400, now=NOW)
    assert isinstance(got, LimitWait) and got.until == NOW + 2


def test_fate_expires_instead_of_waiting_past_give_up() -> None:
    got = fate(rcpt(since=NOW - 200), [], [DAILY], give_up_after=100, now=NOW)
    assert isinstance(got, Settled) and got.provider is None
    assert isinstance(got.outcome, TempFailure)
    assert got.outcome.text == f"4.7.0 {DAILY.reason}"


def test_fate_skipped_for_health_is_deferred() -> None:
    got = fate(rcpt(), [], [DAILY, PAUSED], give_up_after=86400, now=NOW)
    # A limit and a pause: the back-off applies, honouring the shortest wait (c's pause).
    assert isinstance(got, Settled) and got.provider == "c"
    assert isinstance(got.outcome, TempFailure) and got.outcome.retry_after == 300


def test_fate_without_any_provider() -> None:
    got = fate(rcpt(), [], [], give_up_after=86400, now=NOW)
    assert isinstance(got, Settled) and got.provider is None
    assert got.outcome.recipient == "r@example.net"
    assert "no provider" in got.outcome.text


def test_fate_with_answers_names_the_last_provider_and_every_answer() -> None:
    answers: list[tuple[str, Outcome]] = [
        ("a", TempFailure("r@example.net", 421, "421 4.7.0 try later", scope=Scope.PAUSE)),
        ("b", Delivered("r@example.net", 250, "250 ok")),
    ]
    got = fate(rcpt(), answers, [], give_up_after=86400, now=NOW)
    assert isinstance(got, Settled) and got.provider == "b"
    assert isinstance(got.outcome, Delivered)
    assert got.outcome.text == "250 ok (via b; a said 421 4.7.0 try later)"


def test_fate_answers_win_over_skips_except_a_not_here() -> None:
    refused = TempFailure("r@example.net", 451, "451 4.3.0 busy")
    got = fate(rcpt(), [("a", refused)], [PAUSED], give_up_after=86400, now=NOW)
    assert got == Settled(refused, "a")
    # "Not through this provider" is final only if no provider of the route was skipped.
    got = fate(rcpt(), [("a", no_smtputf8("r@example.net"))], [PAUSED], give_up_after=1, now=NOW)
    assert isinstance(got, Settled) and isinstance(got.outcome, TempFailure)
    assert got.outcome.retry_after == 300
    got = fate(rcpt(), [("a", no_smtputf8("r@example.net"))], [], give_up_after=1, now=NOW)
    assert isinstance(got, Settled) and isinstance(got.outcome, PermFailure)


def test_batch_wait_holds_mail_only_until_the_window_since_the_last_claim_ends() -> None:
    # Right behind a claim: wait out the rest of the window.
    assert batch_wait(NOW + 0.001, NOW, 0.005) == pytest.approx(0.004)
    # A quiet spell (or the very first claim): at once.
    assert batch_wait(NOW + 0.005, NOW, 0.005) == 0.0
    assert batch_wait(NOW + 60, NOW, 0.005) == 0.0
    assert batch_wait(NOW, -float("inf"), 0.005) == 0.0
    # A window of 0 never holds anything.
    assert batch_wait(NOW, NOW, 0.0) == 0.0
