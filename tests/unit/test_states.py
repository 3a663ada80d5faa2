"""State words: the one table tying recipient, attempt and event statuses, and the enums."""

from __future__ import annotations

import json
import random
from enum import StrEnum
from pathlib import Path

import pytest

from admin.guard import Identity, Via
from relay.bounces.poller import MailboxState, PollStatus
from relay.config import RetrySettings, SpoolSettings
from relay.events import OUTCOME_EVENTS, event_body
from relay.events import EventType as ReExported
from relay.model import (
    STATUS_WORDS,
    Action,
    AttemptStatus,
    Delivered,
    EventType,
    GrantState,
    Outcome,
    PermFailure,
    ProviderHealth,
    RecipientStatus,
    Selection,
    TempFailure,
)
from relay.outbound.health import Health
from relay.outbound.oauth import SignInState, TokenState
from relay.outbound.retry import decide
from relay.outbound.sign_in import SignInProgress
from relay.store.spool import Control, Spool


@pytest.mark.parametrize(
    ("enum", "column"),
    [(RecipientStatus, "recipient"), (AttemptStatus, "attempt"), (EventType, "event")],
)
def test_every_member_of_each_enum_is_in_the_table(enum: type[StrEnum], column: str) -> None:
    present = {getattr(row, column) for row in STATUS_WORDS}
    assert set(enum.__members__.values()) - present == set()


def test_the_table_has_no_row_twice_and_no_empty_row() -> None:
    assert len(set(STATUS_WORDS)) == len(STATUS_WORDS)
    assert all(any(word is not None for word in row) for row in STATUS_WORDS)


def test_a_recipient_status_is_logged_one_way_and_an_event_leaves_one_status() -> None:
    logged: dict[RecipientStatus, set[AttemptStatus]] = {}
    left: dict[EventType, set[RecipientStatus]] = {}
    for row in STATUS_WORDS:
        if row.recipient is not None and row.attempt is not None:
            logged.setdefault(row.recipient, set()).add(row.attempt)
        if row.event is not None and row.recipient is not None:
            left.setdefault(row.event, set()).add(row.recipient)
    assert all(len(v) == 1 for v in logged.values()), logged
    assert all(len(v) == 1 for v in left.values()), left
    for status in RecipientStatus:
        assert status.attempt_status == next(iter(logged.get(status, {None})))
    for event in EventType:
        assert event.recipient_status == next(iter(left.get(event, {None})))


def test_the_conversions_read_the_table() -> None:
    assert RecipientStatus.SENT.attempt_status is AttemptStatus.SUCCESS
    assert RecipientStatus.EXPIRED.attempt_status is AttemptStatus.FAIL
    assert RecipientStatus.SENDING.attempt_status is AttemptStatus.IN_PROGRESS
    assert RecipientStatus.HELD.attempt_status is None
    assert EventType.RELEASED.recipient_status is RecipientStatus.QUEUED
    assert EventType.BOUNCED.recipient_status is None


def test_outcome_events_are_the_rows_with_all_three_words() -> None:
    assert OUTCOME_EVENTS == {
        EventType.SENT,
        EventType.DEFERRED,
        EventType.FAILED,
        EventType.EXPIRED,
        EventType.SUPPRESSED,
    }
    assert ReExported is EventType


T0 = 1_700_000_000.0
OUTCOMES: list[tuple[Outcome, float]] = [
    (Delivered("a@x", 250, "ok"), T0),
    (PermFailure("a@x", 550, "no"), T0),
    (TempFailure("a@x", 451, "later"), T0),
    (TempFailure("a@x", 451, "later"), T0 + 10 * 86400),  # expired
]


@pytest.mark.parametrize(("outcome", "now"), OUTCOMES)
def test_every_decision_of_the_retry_policy_has_a_log_status(outcome: Outcome, now: float) -> None:
    policy = RetrySettings(jitter=0)
    d = decide(outcome, attempts=1, since=T0, now=now, policy=policy, rng=random.Random(1))
    assert d.attempt_status is d.status.attempt_status
    assert d.attempt_status is not None


def test_enums_keep_their_plain_words_in_json_and_text() -> None:
    assert json.loads(event_body("e", EventType.SENT, 1.0, {"h": ProviderHealth.OK}))["data"] == {
        "h": "ok"
    }
    assert f"{SignInState.FAILED}" == "sign-in failed"
    assert [s.value for s in ProviderHealth] == ["unknown", "ok", "error", "cooldown", "degraded"]
    assert [s.value for s in TokenState] == ["unknown", "valid", "expired", "error", "reauthorize"]
    assert [s.value for s in SignInProgress] == ["pending", "connected", "failed"]
    assert [s.value for s in GrantState] == ["connected", "failed"]
    assert [s.value for s in Via] == ["token", "basic", "cookie", "open", "none"]


def test_health_states_come_from_the_enum() -> None:
    h = Health()
    assert h.view(0).state is ProviderHealth.UNKNOWN
    h.record_ok(1)
    assert h.view(1).state is ProviderHealth.OK
    h.record_failure("boom", 2, threshold=2, cooldown=60)
    assert h.view(2).state is ProviderHealth.ERROR
    h.record_failure("boom", 3, threshold=2, cooldown=60)
    assert h.view(3).state is ProviderHealth.COOLDOWN


def test_only_a_none_identity_is_unauthenticated() -> None:
    assert [v for v in Via if not Identity(v, None, None).authenticated] == [Via.NONE]


async def test_every_action_the_store_audits_is_an_action(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    async with await Spool.open(spool_where) as spool:
        everything = Selection(everything=True)
        await spool.control(everything, Control(Action.HOLD, "test"))
        await spool.control(everything, Control(Action.RELEASE, "test"))
        await spool.control(everything, Control(Action.REROUTE, "test", provider="p"))
        await spool.pause_provider("p", actor="test")
        await spool.resume_provider("p", actor="test")
        entries = await spool.audit_log()
    assert sorted(e.action for e in entries) == sorted(
        ["hold", "release", "reroute", "pause", "resume"]
    )
    assert {Action(e.action) for e in entries} <= set(Action)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (PollStatus(configured=True), MailboxState.WAITING),
        (PollStatus(configured=True, last_ok_at=T0), MailboxState.OK),
        (PollStatus(configured=True, failures=1), MailboxState.FAILING),
        # a failure after a success is what the operator must see
        (PollStatus(configured=True, last_ok_at=T0, failures=2), MailboxState.FAILING),
    ],
)
def test_the_bounce_mailbox_has_one_state_word(status: PollStatus, state: MailboxState) -> None:
    assert status.state is state


def test_every_action_has_a_past_tense_of_its_own() -> None:
    pasts = [a.past for a in Action]
    assert len(set(pasts)) == len(pasts) and all(pasts)
    assert Action.HOLD.past == "held" and Action.RETRY.past == "made due now"
