"""Whom a reply speaks for, end to end over loopback: one recipient, or the whole provider."""

from __future__ import annotations

import time

import pytest

from relay.model import QueueEntry, RecipientStatus
from relay.store.spool import Spool
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.upstream import TestUpstream

GREYLISTED = "451 4.7.1 Greylisted, please try again later"


async def _status(spool: Spool, qid: str, status: RecipientStatus) -> list[QueueEntry]:
    found = await entries(spool, qid)
    return [e for e in found if e.status is status]


async def test_greylisting_one_recipient_does_not_pause_the_provider(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    """The greylisted recipient waits; everyone else's mail goes through the same provider."""
    upstream.reply["RCPT:grey@example.net"] = GREYLISTED
    providers = [
        provider_for(upstream, "main", priority=1, cooldown="60s"),
        provider_for(upstream2, "spare", priority=2),
    ]
    async with sluice(providers) as s:
        _, reply = await smtp_send(s.port, SENDER, ["grey@example.net"], message("grey"))
        grey = queue_id_of(reply)
        (entry,) = await eventually(lambda: _status(s.spool, grey, RecipientStatus.DEFERRED))
        assert entry.reason == GREYLISTED and entry.provider == "main"

        # Another message through the same provider is delivered at once.
        started = time.monotonic()
        _, reply = await smtp_send(s.port, SENDER, ["other@example.net"], message("other"))
        other = queue_id_of(reply)
        (got,) = await upstream.wait_for(1, within=10)
        (done,) = await eventually(lambda: sent(s.spool, other))
        assert time.monotonic() - started < 10  # not after the 60 s cool-down
        assert got.recipients == ["other@example.net"] and done.provider == "main"
        (main, _spare) = await s.daemon.snapshot().providers.status()
        assert main.health != "cooldown" and main.blocked_until is None

        # Greylisting is the recipient's: it is not handed to the spare provider,
        # and once the greylist lets it through, it is delivered (nothing lost).
        assert upstream2.messages == []
        del upstream.reply["RCPT:grey@example.net"]
        await upstream.wait_for(2)
        (entry,) = await eventually(lambda: sent(s.spool, grey))
        assert entry.provider == "main" and entry.attempts >= 2


async def test_the_same_4xx_to_every_recipient_pauses_the_provider_and_fails_over(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    upstream.reply["RCPT"] = "450 4.3.0 Error: command failed"
    providers = [
        provider_for(upstream, "main", priority=1, cooldown="60s"),
        provider_for(upstream2, "spare", priority=2),
    ]
    rcpts = ["a@example.net", "b@example.net"]
    async with sluice(providers) as s:
        _, reply = await smtp_send(s.port, SENDER, rcpts, message())
        qid = queue_id_of(reply)
        (got,) = await upstream2.wait_for(1)
        done = await eventually(lambda: sent(s.spool, qid))
        assert got.recipients == rcpts
        assert {e.provider for e in done} == {"spare"}
        assert all(e.attempts == 1 for e in done)  # in the same attempt, no back-off
        by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
        assert by_id["main"].health == "cooldown"
        assert by_id["main"].blocked_until is not None
        assert by_id["main"].blocked_until - time.time() > 30  # the cool-down


async def test_a_4xx_to_mail_pauses_the_provider(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    """MAIL comes before any recipient: its 4xx speaks for the provider (RFC 5321 § 4.1.1.2)."""
    upstream.reply["MAIL"] = "451 4.3.0 Error: queue file write error"
    providers = [
        provider_for(upstream, "main", priority=1, cooldown="60s"),
        provider_for(upstream2, "spare", priority=2),
    ]
    async with sluice(providers) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: sent(s.spool, queue_id_of(reply)))
        assert entry.provider == "spare"
        by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
        assert by_id["main"].health == "cooldown"


async def test_failover_reason_names_each_providers_answer(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused primary, then a busy backup: the queue and the log say who said what."""
    await upstream.stop()
    upstream2.reply["MAIL"] = "451 4.3.0 busy"
    providers = [
        provider_for(upstream, "primary", priority=1),
        provider_for(upstream2, "backup", priority=2),
    ]
    async with sluice(providers) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _status(s.spool, qid, RecipientStatus.DEFERRED))
        assert entry.reason.startswith(
            "451 4.3.0 busy (via backup; primary said 4.4.1 connection refused"
        ), entry.reason
        assert entry.provider == "backup"
        (log,) = await s.spool.list_log(search=qid)
        assert log.reason == entry.reason and log.code == 451
        # Nothing lost: the primary comes back and takes it on a retry.
        await upstream.restart()
        await upstream.wait_for(1, within=20)
        (entry,) = await eventually(lambda: sent(s.spool, qid), within=20)
        assert entry.provider == "primary"
    outcome_lines = [r.getMessage() for r in caplog.records if "status=deferred" in r.getMessage()]
    assert any(
        "451 4.3.0 busy (via backup; primary said 4.4.1 connection refused" in line
        for line in outcome_lines
    ), outcome_lines
