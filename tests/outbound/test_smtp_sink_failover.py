"""Failover decided by what a real peer answers: Postfix's smtp-sink, then our fake upstream.

smtp-sink ``-r RCPT`` answers ``450 4.3.0 Error: command failed`` to every
RCPT, and smtp-sink never offers SMTPUTF8; tests/upstream.py does.
"""

from __future__ import annotations

import aiosmtplib
import pytest

from relay.model import QueueEntry, RecipientStatus
from relay.store.spool import Spool
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.peers import SmtpSink, smtp_sink
from tests.upstream import TestUpstream

SINK_REFUSAL = "450 4.3.0 Error: command failed"


def sink_provider(sink: SmtpSink, **extra: object) -> dict[str, object]:
    return {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none", **extra}


async def _status(spool: Spool, qid: str, status: RecipientStatus) -> list[QueueEntry]:
    return [e for e in await entries(spool, qid) if e.status is status]


async def _send_utf8(port: int, recipients: list[str]) -> str:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
        refused, reply = await client.sendmail(
            SENDER, recipients, message("utf8"), mail_options=["SMTPUTF8"]
        )
    assert refused == {}
    return queue_id_of(reply)


async def test_4xx_to_every_rcpt_pauses_smtp_sink_and_fails_over(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    rcpts = ["a@example.net", "b@example.net"]
    async with smtp_sink("-r", "RCPT") as sink:
        providers = [
            sink_provider(sink, priority=1, cooldown="60s"),
            provider_for(upstream, "spare", priority=2),
        ]
        async with sluice(providers) as s:
            _, reply = await smtp_send(s.port, SENDER, rcpts, message())
            qid = queue_id_of(reply)
            (got,) = await upstream.wait_for(1)
            done = await eventually(lambda: sent(s.spool, qid))
            by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
        assert sink.messages() == []
    assert got.recipients == rcpts
    assert {e.provider for e in done} == {"spare"} and all(e.attempts == 1 for e in done)
    # Both answers, in the order the providers gave them.
    for entry in done:
        assert entry.reason.startswith("250 "), entry.reason
        assert entry.reason.endswith(f" (via spare; sink said {SINK_REFUSAL})"), entry.reason
    assert by_id["sink"].health == "cooldown"
    assert by_id["sink"].last_error == SINK_REFUSAL
    lines = [r.getMessage() for r in caplog.records if "status=sent" in r.getMessage()]
    assert len(lines) == 2 and all(f"(via spare; sink said {SINK_REFUSAL})" in x for x in lines)


async def test_when_both_refuse_the_reason_and_log_show_both_answers(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.reply["RCPT"] = "451 4.3.0 busy"
    rcpts = ["a@example.net", "b@example.net"]
    async with smtp_sink("-r", "RCPT") as sink:
        # Both are paused by their refusals: a short cool-down lets the retry come soon.
        providers = [
            sink_provider(sink, priority=1, cooldown="1s"),
            provider_for(upstream, "spare", priority=2, cooldown="1s"),
        ]
        async with sluice(providers) as s:
            _, reply = await smtp_send(s.port, SENDER, rcpts, message())
            qid = queue_id_of(reply)
            deferred = await eventually(lambda: _status(s.spool, qid, RecipientStatus.DEFERRED))
            assert len(deferred) == 2
            want = f"451 4.3.0 busy (via spare; sink said {SINK_REFUSAL})"
            assert all(e.reason == want and e.provider == "spare" for e in deferred)
            first_attempt = sorted(await s.spool.list_log(search=qid), key=lambda e: e.id)[:2]
            assert [e.reason for e in first_attempt] == [want, want]
            # Nothing lost: once the spare takes mail again, both are delivered.
            del upstream.reply["RCPT"]
            await upstream.wait_for(1, within=20)
            await eventually(lambda: sent(s.spool, qid), within=20)
    lines = [r.getMessage() for r in caplog.records if "status=deferred" in r.getMessage()]
    assert lines and all(want in line for line in lines)


async def test_smtputf8_recipient_goes_to_the_provider_that_offers_it(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with smtp_sink() as sink:
        providers = [sink_provider(sink, priority=1), provider_for(upstream, "utf8", priority=2)]
        async with sluice(providers) as s:
            qid = await _send_utf8(s.port, ["josé@example.net", "plain@example.net"])
            (got,) = await upstream.wait_for(1)
            done = await eventually(lambda: sent(s.spool, qid))
            (sunk,) = await sink.wait_for(1)
            by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
    assert got.recipients == ["josé@example.net"] and "SMTPUTF8" in got.mail_options
    assert sunk.recipients == ["plain@example.net"]  # the ASCII one stays with the first
    assert {e.email: e.provider for e in done} == {
        "josé@example.net": "utf8",
        "plain@example.net": "sink",
    }
    # Not a fault of smtp-sink's: it is neither paused nor counted as failing.
    assert by_id["sink"].health == "ok"


async def test_no_provider_with_smtputf8_fails_for_good_with_a_clear_reason(
    sluice: SluiceFactory,
) -> None:
    async with smtp_sink() as sink:
        async with sluice([sink_provider(sink)]) as s:
            qid = await _send_utf8(s.port, ["josé@example.net", "plain@example.net"])
            (failed,) = await eventually(lambda: _status(s.spool, qid, RecipientStatus.FAILED))
            (ok,) = await eventually(lambda: _status(s.spool, qid, RecipientStatus.SENT))
            await s.wait_idle()
            (sunk,) = sink.messages()
    assert failed.email == "josé@example.net" and failed.attempts == 1
    assert failed.reason.startswith("553 5.6.7 no provider offers SMTPUTF8"), failed.reason
    assert "tried: sink" in failed.reason
    assert ok.email == "plain@example.net" and sunk.recipients == ["plain@example.net"]
