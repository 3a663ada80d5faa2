"""The provider health rule (``relay.outbound.health.judge``) over windows of real outcomes.

The outcomes are what ``relay.outbound.replies`` makes of real replies, so
the rule is tested as the daemon feeds it: a 451 to every recipient turns
the provider red, one bad mailbox never does.
"""

from __future__ import annotations

from relay.model import Delivered, Outcome, PermFailure, ProviderHealth, Scope, TempFailure
from relay.outbound.health import WINDOW, Attempt, Health, HealthRecord, judge


def attempt(at: float, *outcomes: Outcome) -> Attempt:
    return Attempt.of(list(outcomes), at)


def ok(rcpt: str) -> Delivered:
    return Delivered(rcpt, 250, "250 2.0.0 OK")


def deferred(rcpt: str, text: str = "451 4.3.0 try again later") -> TempFailure:
    return TempFailure(rcpt, int(text[:3]), text)


def test_nothing_tried_is_unknown() -> None:
    assert judge([]).state is ProviderHealth.UNKNOWN


def test_deliveries_that_succeed_are_healthy() -> None:
    window = [attempt(i, ok(f"u{i}@a.example")) for i in range(WINDOW)]
    assert judge(window) == judge(window[:1])
    assert judge(window).state is ProviderHealth.OK


def test_the_same_451_to_every_recipient_is_failing() -> None:
    window = [attempt(i, deferred(f"u{i}@d{i}.example")) for i in range(WINDOW)]
    verdict = judge(window)
    assert verdict.state is ProviderHealth.ERROR
    assert "451 4.3.0" in verdict.reason and "same reply" in verdict.reason
    # Before the window is full it is amber, not yet red.
    assert judge(window[:2]).state is ProviderHealth.DEGRADED
    assert judge(window[:1]).state is ProviderHealth.OK


def test_provider_faults_in_a_row_are_failing() -> None:
    fault = TempFailure("x@a.example", None, "connection refused", scope=Scope.PROVIDER)
    window = [attempt(i, fault) for i in range(WINDOW)]
    verdict = judge(window)
    assert verdict.state is ProviderHealth.ERROR and "connection refused" in verdict.reason


def test_one_bad_mailbox_never_speaks_for_the_provider() -> None:
    bad = PermFailure("nobody@a.example", 550, "550 5.1.1 no such user")
    window = [attempt(i, bad) for i in range(WINDOW)]
    assert judge(window).state is ProviderHealth.OK
    # Nor do many bad mailboxes: the reply is about each address.
    window = [
        attempt(i, PermFailure(f"n{i}@a.example", 550, "550 5.1.1 no such user"))
        for i in range(WINDOW)
    ]
    assert judge(window).state is ProviderHealth.OK


def test_one_recipient_deferred_again_and_again_is_not_red() -> None:
    """A greylisting mailbox retried five times: the same reply, but one recipient."""
    window = [attempt(i, deferred("slow@a.example", "450 4.2.0 greylisted")) for i in range(5)]
    assert judge(window).state is ProviderHealth.DEGRADED


def test_different_replies_are_degraded_not_failing() -> None:
    window = [
        attempt(0, deferred("a@a.example", "451 4.3.0 later")),
        attempt(1, deferred("b@b.example", "452 4.2.2 mailbox full")),
        attempt(2, ok("c@c.example")),
        attempt(3, deferred("d@d.example", "451 4.3.0 later")),
        attempt(4, deferred("e@e.example", "450 4.7.1 greylisted")),
    ]
    verdict = judge(window)
    assert verdict.state is ProviderHealth.DEGRADED
    assert verdict.reason.startswith("4 of the last 5 attempts delivered nothing")


def test_a_share_of_deferrals_below_half_stays_green() -> None:
    window = [attempt(i, ok(f"u{i}@a.example")) for i in range(2)]
    window += [attempt(3, deferred("x@a.example")), attempt(4, deferred("y@b.example"))]
    assert judge(window).state is ProviderHealth.DEGRADED  # 2 of 4: half
    window.insert(0, attempt(-1, ok("z@a.example")))
    assert judge(window).state is ProviderHealth.OK  # 2 of 5: below half


def test_a_partly_delivered_transaction_counts_as_delivered() -> None:
    window = [attempt(i, ok(f"u{i}@a.example"), deferred(f"v{i}@b.example")) for i in range(5)]
    assert judge(window).state is ProviderHealth.OK


def test_recovery_turns_green_once_successes_fill_the_window() -> None:
    h = Health()
    for i in range(WINDOW):
        h.record_attempt(attempt(i, deferred(f"u{i}@d{i}.example")))
        h.record_ok(i)
    view = h.view(10)
    assert view.state is ProviderHealth.ERROR and view.since == 4.0
    for i in range(WINDOW):
        h.record_attempt(attempt(20 + i, ok(f"u{i}@d{i}.example")))
        h.record_ok(20 + i)
    view = h.view(30)
    assert view.state is ProviderHealth.OK and view.reason == ""


def test_the_record_another_process_reads_gives_the_same_word() -> None:
    h = Health()
    h.record_failure("421 4.7.0 too busy", 100.0, threshold=1, cooldown=60)
    rec = HealthRecord.from_json(h.record(100.0).to_json())
    assert rec is not None
    for now in (100.0, 159.0, 161.0):
        view = h.view(now)
        assert rec.resolve(now) == (view.state, view.reason, view.since)
    assert rec.resolve(120.0)[0] is ProviderHealth.COOLDOWN
    assert rec.resolve(161.0)[0] is ProviderHealth.ERROR
    assert HealthRecord.from_json("not json") is None


def test_an_outage_ends_at_the_first_delivery() -> None:
    fault = TempFailure("x@a.example", None, "4.4.1 connection refused", scope=Scope.PROVIDER)
    window = [attempt(0, fault), attempt(1, fault), attempt(2, ok("y@a.example"))]
    assert judge(window).state is ProviderHealth.OK
    # Deferrals are different: they still count for their share.
    window = [attempt(0, deferred("a@a.example")), attempt(1, deferred("b@b.example"))]
    assert judge([*window, attempt(2, ok("c@c.example"))]).state is ProviderHealth.DEGRADED
