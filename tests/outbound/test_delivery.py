"""End to end through real sockets: client → Sluice → test upstream, with faults."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

from relay.config import SpoolSettings
from relay.model import AttemptStatus, LogEntry, QueueEntry, RecipientStatus
from relay.store.spool import NewMessage, Spool
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream

SENDER = "app@example.org"


def message(subject: str = "test", body: bytes = b"hello\r\n") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.net\r\nSubject: {subject}\r\n"
        "Message-ID: <m1@example.org>\r\n\r\n"
    ).encode() + body


def strip_received(data: bytes) -> bytes:
    """Remove the one Received header Sluice prepends (three folded lines)."""
    assert data.startswith(b"Received: from ")
    lines = data.split(b"\r\n")
    assert lines[1].startswith(b"\tby ") and lines[2].startswith(b"\t")
    return b"\r\n".join(lines[3:])


async def entries(spool: Spool, queue_id: str | None = None) -> list[QueueEntry]:
    return await spool.list_queue(search=queue_id)


async def log_rows(spool: Spool, queue_id: str) -> list[LogEntry]:
    return sorted(await spool.list_log(search=queue_id), key=lambda e: e.id)


def queue_id_of(reply: str) -> str:
    return reply.rsplit(" ", 1)[-1]


async def test_bytes_arrive_unchanged(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    attachment = base64.encodebytes(os.urandom(3000)).replace(b"\n", b"\r\n")
    body = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        + "Grüße, ça marche, 日本語\r\n".encode()
        + b".a line starting with a dot\r\n..two dots\r\n.\r\n"  # dot-stuffing both ways
        + b"x" * 998
        + b"\r\n"  # the longest line RFC 5321 allows
        + b"high bytes: \x80\xfe\xff\r\n"
        b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b"\r\n" + attachment + b"--XX--\r\n"
    )
    data = message("bytes", b"") + body
    rcpts = [f"user{i}@example.net" for i in range(60)]
    async with sluice([provider_for(upstream)]) as s:
        refused, _ = await smtp_send(s.port, SENDER, rcpts, data)
        assert refused == {}
        (got,) = await upstream.wait_for(1)
        await s.wait_idle()
        counts = await s.spool.counts_by_status()
    assert strip_received(got.data) == data
    assert got.recipients == rcpts
    assert got.sender == SENDER
    assert "BODY=8BITMIME" in got.mail_options
    assert counts[RecipientStatus.SENT] == 60


async def test_mail_right_behind_a_claim_waits_for_the_batch_window_and_goes_in_one_claim(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """``delivery.batch_window``: the first message after a quiet spell is claimed
    at once; the ones that arrive within the window after that claim wait for
    the window's end and are claimed together (one claim transaction: their
    attempts share its start time)."""
    window = 1.0
    async with sluice([provider_for(upstream)], delivery={"batch_window": f"{window}s"}) as s:
        accepted = time.monotonic()
        _, first = await smtp_send(s.port, SENDER, ["a@example.net"], message("first"))
        (got,) = await upstream.wait_for(1)
        assert got.at - accepted < window, "a message after a quiet spell waited"
        # Within the window of the first claim: these two wait for its end.
        _, second = await smtp_send(s.port, SENDER, ["b@example.net"], message("second"))
        _, third = await smtp_send(s.port, SENDER, ["c@example.net"], message("third"))
        await upstream.wait_for(3)
        await s.wait_idle()
        (a,) = await log_rows(s.spool, queue_id_of(first))
        (b,) = await log_rows(s.spool, queue_id_of(second))
        (c,) = await log_rows(s.spool, queue_id_of(third))
    assert b.started_at == c.started_at, "the two were not claimed together"
    assert b.started_at - a.started_at >= window - 0.05
    # The two went out together, in either order, after the first.
    assert upstream.messages[0].recipients == ["a@example.net"]
    assert sorted(r for m in upstream.messages[1:] for r in m.recipients) == [
        "b@example.net",
        "c@example.net",
    ]


async def test_temporary_failure_then_success(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["DATA"] = "451 4.3.0 Mailbox busy, try later"
    async with sluice([provider_for(upstream)]) as s:
        before = time.time()
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message("retry me"))
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.DEFERRED))
        assert entry.attempts == 1
        assert entry.email == "a@example.net"
        assert entry.subject == "retry me"
        assert entry.reason == "451 4.3.0 Mailbox busy, try later"
        assert entry.provider == "up1"
        assert entry.last_attempt_at is not None and entry.last_attempt_at >= before
        assert entry.next_attempt_at is not None and entry.next_attempt_at > entry.last_attempt_at
        (log,) = await log_rows(s.spool, qid)
        assert log.status is AttemptStatus.DEFERRED
        assert log.code == 451
        assert log.reason == "451 4.3.0 Mailbox busy, try later"
        assert log.subject == "retry me"
        assert upstream.messages == []

        del upstream.reply["DATA"]
        await upstream.wait_for(1)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.SENT))
        assert entry.attempts == 2
        logs = await log_rows(s.spool, qid)
    assert [e.status for e in logs] == [AttemptStatus.DEFERRED, AttemptStatus.SUCCESS]
    assert logs[1].reason.startswith("250 ")
    assert len(upstream.messages) == 1


async def test_permanent_failure(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    upstream.reply["DATA"] = "554 5.7.1 Message rejected as spam"
    async with sluice([provider_for(upstream)]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.FAILED))
        await s.wait_idle()
        (log,) = await log_rows(s.spool, qid)
    assert entry.attempts == 1
    assert entry.next_attempt_at is None
    assert entry.reason == "554 5.7.1 Message rejected as spam"
    assert log.status is AttemptStatus.FAIL
    assert log.code == 554


async def test_recipients_are_judged_one_by_one(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 No such user"
    upstream.reply["RCPT:busy@example.net"] = "450 4.2.1 Mailbox busy"
    rcpts = ["good1@example.net", "bad@example.net", "busy@example.net", "good2@example.net"]
    async with sluice([provider_for(upstream)]) as s:
        _, reply = await smtp_send(s.port, SENDER, rcpts, message())
        qid = queue_id_of(reply)
        (first,) = await upstream.wait_for(1)
        assert first.recipients == ["good1@example.net", "good2@example.net"]
        await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.DEFERRED))
        states = {e.email: e.status for e in await entries(s.spool, qid)}
        assert states == {
            "good1@example.net": RecipientStatus.SENT,
            "bad@example.net": RecipientStatus.FAILED,
            "busy@example.net": RecipientStatus.DEFERRED,
            "good2@example.net": RecipientStatus.SENT,
        }
        del upstream.reply["RCPT:busy@example.net"]
        _, second = await upstream.wait_for(2)
        await s.wait_idle()
    # Only the deferred recipient is sent again; the delivered ones never are.
    assert second.recipients == ["busy@example.net"]
    assert len(upstream.messages) == 2


async def test_upstream_down_then_up(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    await upstream.stop()
    async with sluice([provider_for(upstream)]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.DEFERRED))
        assert "connect" in entry.reason.lower() or "refused" in entry.reason.lower()
        (log,) = await log_rows(s.spool, qid)
        assert log.status is AttemptStatus.DEFERRED
        assert log.code is None
        await upstream.restart()
        await upstream.wait_for(1)
        await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.SENT))


async def test_upstream_that_hangs_times_out(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    upstream.hang.add("DATA")
    async with sluice([provider_for(upstream)], delivery={"data_timeout": "0.5s"}) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.DEFERRED))
        assert "timeout" in entry.reason.lower() or "timed out" in entry.reason.lower()
        upstream.hang.clear()
        await upstream.wait_for(1)
        await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.SENT))
        logs = await log_rows(s.spool, qid)
    assert logs[0].status is AttemptStatus.DEFERRED
    assert logs[-1].status is AttemptStatus.SUCCESS


async def test_new_mail_is_attempted_at_once(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    # A long poll interval: only the spool's wake-up can explain a prompt delivery.
    async with sluice([provider_for(upstream)], delivery={"poll_interval": "1h"}) as s:
        await smtp_send(s.port, SENDER, ["a@example.net"], message())
        await upstream.wait_for(1, within=5)


async def test_connection_is_reused(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream, max_connections=1)]) as s:
        for i in range(5):
            await smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}"))
        await upstream.wait_for(5)
    assert upstream.connections < 5


async def _with_status(spool: Spool, qid: str, status: RecipientStatus) -> list[QueueEntry]:
    found = await entries(spool, qid)
    return found if any(e.status is status for e in found) else []


async def test_gives_up_after_the_configured_time(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["DATA"] = "452 4.3.1 Insufficient storage"
    retry = {"first_delay": "0.2s", "max_delay": "0.2s", "give_up_after": "1s"}
    async with sluice([provider_for(upstream)], retry=retry) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.EXPIRED))
        logs = await log_rows(s.spool, qid)
    assert entry.attempts >= 2
    assert entry.next_attempt_at is None
    assert entry.reason.startswith("4.4.7 gave up after 1s: 452 4.3.1 Insufficient storage")
    assert [e.status for e in logs[:-1]] == [AttemptStatus.DEFERRED] * (len(logs) - 1)
    assert logs[-1].status is AttemptStatus.FAIL


async def test_an_expired_lease_is_taken_back(spool_where: Path | SpoolSettings) -> None:
    # A recipient claimed by an attempt that never reported back (a wedged
    # task) is queued again once its lease runs out, and its log row closed.
    clock = [1000.0]
    spool = await Spool.open(spool_where, clock=lambda: clock[0])
    try:
        await spool.enqueue(
            NewMessage("Q1", "a@x.y", ["b@x.y"], b"Subject: s\r\n\r\nb\r\n", "s", 1000.0)
        )
        (claim,) = await spool.claim_due(10, lease=60)
        assert await spool.requeue_expired_leases() == 0
        clock[0] += 61
        assert await spool.requeue_expired_leases() == 1
        (entry,) = await spool.list_queue()
        (log,) = await spool.list_log()
        assert entry.status is RecipientStatus.QUEUED
        assert log.status is AttemptStatus.DEFERRED
        assert "lease" in log.reason
        # The old attempt can no longer record an outcome over the new state.
        (again,) = await spool.claim_due(10, lease=60)
        assert again.recipients.keys() == claim.recipients.keys()
    finally:
        await spool.aclose()


async def test_deliveries_in_flight_are_bounded(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.hang.add("DATA")
    async with sluice(
        [provider_for(upstream, max_connections=10)], delivery={"max_concurrent": 2}
    ) as s:
        for i in range(5):
            await smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}"))

        async def two_sending() -> bool:
            counts = await s.spool.counts_by_status()
            return counts[RecipientStatus.SENDING] == 2 and upstream.connections == 2

        await eventually(two_sending)
        counts = await s.spool.counts_by_status()
        assert counts[RecipientStatus.QUEUED] == 3  # the rest wait unclaimed
        upstream.hang.clear()
        # The hung two time out and are retried; all five go through.
        await upstream.wait_for(5, within=30)

        async def all_sent() -> bool:
            return (await s.spool.counts_by_status())[RecipientStatus.SENT] == 5

        await eventually(all_sent)


async def test_a_garbled_reply_is_a_temporary_local_error(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["DATA"] = "this is not SMTP"
    async with sluice([provider_for(upstream)]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _with_status(s.spool, qid, RecipientStatus.DEFERRED))
        assert entry.status is RecipientStatus.DEFERRED  # not the upstream's 5xx verdict
        del upstream.reply["DATA"]
        await upstream.wait_for(1)


async def test_spool_is_wal_with_full_sync(tmp_path: Path) -> None:
    spool = await Spool.open(tmp_path / "s.sqlite3")
    try:
        mode = await spool._writer.submit(lambda c: c.execute("PRAGMA journal_mode").fetchone())
        sync = await spool._writer.submit(lambda c: c.execute("PRAGMA synchronous").fetchone())
    finally:
        await spool.aclose()
    assert mode[0] == "wal"
    assert sync[0] == 2  # FULL: the WAL is synced at every commit (survives power loss)


async def test_utf8_addresses_go_out_with_smtputf8(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    sender, rcpt = "expéditeur@exemple.fr", "用户@例子.广告"
    async with sluice([provider_for(upstream)]) as s:
        import aiosmtplib

        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=s.port, timeout=10) as client:
            refused, _ = await client.sendmail(
                sender, [rcpt], message("utf8"), mail_options=["SMTPUTF8"]
            )
        assert refused == {}
        (got,) = await upstream.wait_for(1)
    assert (got.sender, got.recipients) == (sender, [rcpt])
    assert "SMTPUTF8" in got.mail_options


async def test_an_address_that_cannot_go_on_a_command_line_fails_without_reaching_it(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """A spooled address that is not a mailbox (here: one smuggling an ESMTP parameter)."""
    bad = "victim@example.net> NOTIFY=NEVER"
    async with sluice([provider_for(upstream)]) as s:
        await s.spool.enqueue(
            NewMessage("QBAD1", SENDER, [bad, "ok@example.net"], message(), "s", time.time())
        )
        s.spool.wake.set()
        (got,) = await upstream.wait_for(1)
        await s.wait_idle()
        rows = await log_rows(s.spool, "QBAD1")
    assert got.recipients == ["ok@example.net"]
    failed = [r for r in rows if r.email == bad]
    assert [r.status for r in failed] == [AttemptStatus.FAIL]
    assert failed[0].code == 553 and "5.1.3" in failed[0].reason, failed[0].reason
