"""Counts in words, and the daemon's start-up summary built from them."""

from __future__ import annotations

import time

import pytest

from relay.daemon import ready_summary
from relay.model import RecipientStatus
from relay.wording import plural, when


@pytest.mark.parametrize(
    ("n", "expected"),
    [(0, "0 attempts"), (1, "1 attempt"), (2, "2 attempts"), (-1, "-1 attempts")],
)
def test_plural(n: int, expected: str) -> None:
    assert plural(n, "attempt") == expected


def test_plural_with_an_irregular_form() -> None:
    assert plural(1, "delivery", "deliveries") == "1 delivery"
    assert plural(3, "delivery", "deliveries") == "3 deliveries"


def test_ready_summary_counts_only_what_is_still_to_deliver() -> None:
    S = RecipientStatus
    assert ready_summary({}) == "0 recipients pending delivery"
    assert ready_summary({S.QUEUED: 1}) == "1 recipient pending delivery"
    counts = {S.QUEUED: 2, S.DEFERRED: 3, S.SENDING: 1, S.SENT: 480, S.FAILED: 2}
    assert ready_summary(counts) == (
        "6 recipients pending delivery (480 sent, 2 failed, kept for spool.keep_sent)"
    )


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0.0, "1970-01-01 00:00:00 UTC"),
        (1796635502.9, "2026-12-07 09:25:02 UTC"),  # seconds only, never rounded up
        (None, "-"),
    ],
)
def test_when_is_utc_with_the_zone_named(ts: float | None, expected: str) -> None:
    assert when(ts) == expected


def test_when_ignores_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell in another zone sees the same time as the admin page and the log."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert when(86400.0) == "1970-01-02 00:00:00 UTC"
        assert when(None, empty="never") == "never"
    finally:
        monkeypatch.undo()  # the zone this process had, before tzset reads it again
        time.tzset()
