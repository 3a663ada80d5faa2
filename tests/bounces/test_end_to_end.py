"""Bounces end to end, with real peers: Sluice -> Postfix -> genuine DSN -> Dovecot -> Sluice.

Sluice relays through a private Postfix that accepts every address of
``undeliverable.test`` at SMTP time and then bounces it, so Postfix writes a
real RFC 3464 report back to the envelope sender: Sluice's VERP address
``bounces+QUEUEID-RCPTID@bounce.test``, which Postfix delivers into a Maildir
that a private Dovecot serves. Sluice's poller reads it over IMAP.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial

import pytest

from relay.events import verify
from relay.model import AttemptStatus, RecipientStatus
from tests.bounces.mailhost import Dovecot, Mailhost, dovecot, mailhost
from tests.conftest import Running, SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.slow

PASSWORD = "b0unce-pw"
GONE = "gone@undeliverable.test"
OK = "ok@bounce.test"


@dataclass
class Peers:
    imap: Dovecot
    mx: Mailhost

    def delivered_to(self, mailbox: str) -> int:
        new = self.imap.mail_dir / mailbox / "new"
        return len(list(new.iterdir())) if new.exists() else 0


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    async with dovecot({"bounces": PASSWORD}) as imap:
        async with mailhost(imap.mail_dir, mailboxes=("bounces", "ok")) as mx:
            yield Peers(imap, mx)


def sections(peers: Peers, **bounces: object) -> dict[str, object]:
    return {
        "bounces": {
            "address": "bounces@bounce.test",
            "verp": True,
            "threshold": 2,
            "mailbox": {
                "host": "127.0.0.1",
                "port": peers.imap.port,
                "encryption": "none",
                "username": "bounces",
                "password": PASSWORD,
                "poll_interval": "200ms",
            },
            **bounces,
        }
    }


def message(subject: str, *, stream: str | None = None) -> bytes:
    extra = f"X-Sluice-Stream: {stream}\r\n" if stream else ""
    return (
        f"From: app@example.org\r\nTo: someone\r\nSubject: {subject}\r\n{extra}\r\nbody\r\n"
    ).encode()


async def send(s: Running, rcpts: list[str], subject: str, **kw: str) -> str:
    refused, reply = await smtp_send(s.port, "app@example.org", rcpts, message(subject, **kw))
    assert refused == {}
    return reply.rsplit(" ", 1)[-1]


async def statuses(s: Running, qid: str) -> dict[str, RecipientStatus]:
    return {r.email: r.status for r in (await s.spool.get(qid)).recipients}


async def test_bounces_suppress_an_address_then_remove_lets_it_through(
    sluice: SluiceFactory, peers: Peers
) -> None:
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    async with sluice([provider], **sections(peers)) as s:
        book = s.spool.suppressions
        # 1: Postfix takes both (250), then bounces GONE: a real DSN comes back.
        first = await send(s, [GONE, OK], "first")
        await eventually(lambda: peers.delivered_to("ok") == 1, within=30)
        await eventually(lambda: _bounces(s, GONE, 1), within=30)
        detail = await s.spool.get(first)
        assert {r.email: r.status for r in detail.recipients} == {
            GONE: RecipientStatus.SENT,
            OK: RecipientStatus.SENT,
        }
        # The log shows SUCCESS, then BOUNCED with the remote MTA's words.
        gone_log = [a for a in detail.attempts if a.email == GONE]
        assert [a.status for a in gone_log] == [AttemptStatus.SUCCESS, AttemptStatus.BOUNCED]
        assert "5.1.1" in gone_log[-1].reason
        (bounce,) = await book.bounces_of(GONE)
        assert bounce.queue_id == first and bounce.source == "dsn"
        assert await book.active(GONE) is None  # 1 of 2

        # 2: the second bounce crosses the threshold.
        await send(s, [GONE], "second")
        await eventually(lambda: book.active(GONE), within=30)
        entry = await book.active(GONE)
        assert entry is not None and entry.source == "bounce" and "5.1.1" in entry.reason

        # 3: GONE is not sent; OK, in the same message, is.
        third = await send(s, [GONE, OK], "third")
        await eventually(lambda: peers.delivered_to("ok") == 2, within=30)
        await eventually(lambda: _settled(s, third), within=30)
        assert await statuses(s, third) == {
            GONE: RecipientStatus.SUPPRESSED,
            OK: RecipientStatus.SENT,
        }
        (gone,) = [r for r in (await s.spool.get(third)).recipients if r.email == GONE]
        assert "suppressed" in gone.reason and "5.1.1" in gone.reason
        assert len(await book.bounces_of(GONE)) == 2  # nothing was sent to bounce

        # 4: the operator lifts it; the next message goes out again.
        rc, out, err = await run_cli("suppression", "remove", GONE, "-c", str(s.config_path))
        assert rc == 0, err
        assert "removed 1 entry" in out
        fourth = await send(s, [GONE], "fourth")
        await eventually(lambda: _status_is(s, fourth, GONE, RecipientStatus.SENT), within=30)


async def test_a_stream_scoped_entry_applies_to_that_stream_only(
    sluice: SluiceFactory, peers: Peers
) -> None:
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    async with sluice([provider], **sections(peers)) as s:
        await s.spool.suppressions.add(OK, scope="stream-a", source="api", reason="unsubscribed")
        a = await send(s, [OK], "to A", stream="Stream-A")
        b = await send(s, [OK], "to B", stream="stream-b")
        await eventually(lambda: _status_is(s, a, OK, RecipientStatus.SUPPRESSED), within=30)
        await eventually(lambda: _status_is(s, b, OK, RecipientStatus.SENT), within=30)
        await eventually(lambda: peers.delivered_to("ok") == 1, within=30)


async def test_per_stream_bounces_suppress_the_newsletter_not_the_resets(
    sluice: SluiceFactory, peers: Peers
) -> None:
    """``bounces.suppress_scope: stream``: a real DSN of a newsletter scopes the entry."""
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    settings = sections(peers, threshold=1, suppress_scope="stream")
    async with sluice([provider], **settings) as s:
        book = s.spool.suppressions
        await send(s, [GONE], "issue 1", stream="News")
        await eventually(lambda: book.active(GONE, "news"), within=30)
        (entry,) = await book.entries_of(GONE)
        assert (entry.scope, entry.source) == ("news", "bounce") and "5.1.1" in entry.reason
        assert await book.active(GONE) is None
        # The next issue is held back; a password reset to the same address still goes.
        news = await send(s, [GONE], "issue 2", stream="news")
        reset = await send(s, [GONE], "your password reset")
        await eventually(lambda: _status_is(s, news, GONE, RecipientStatus.SUPPRESSED), within=30)
        await eventually(lambda: _status_is(s, reset, GONE, RecipientStatus.SENT), within=30)


async def test_a_providers_refusal_of_the_address_counts_as_a_bounce(
    sluice: SluiceFactory,
) -> None:
    """Synchronous bounces: the upstream refuses the address at RCPT (5.1.1)."""
    up = await TestUpstream().start()
    up.reply["RCPT"] = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"
    try:
        async with sluice([provider_for(up)], bounces={"threshold": 2}) as s:
            for n in range(2):
                qid = await send(s, ["gone@example.net"], f"m{n}")
                await eventually(
                    partial(_status_is, s, qid, "gone@example.net", RecipientStatus.FAILED)
                )
            entry = await s.spool.suppressions.active("gone@example.net")
            assert entry is not None and entry.source == "bounce"
            bounces = await s.spool.suppressions.bounces_of("gone@example.net")
            assert [b.source for b in bounces] == ["smtp", "smtp"]
            # A policy refusal (5.7.1) is not about the address: it never counts.
            up.reply["RCPT"] = "550 5.7.1 Message rejected as spam"
            for n in range(3):
                qid = await send(s, ["spam@example.net"], f"s{n}")
                await eventually(
                    partial(_status_is, s, qid, "spam@example.net", RecipientStatus.FAILED)
                )
            assert await s.spool.suppressions.bounces_of("spam@example.net") == []
    finally:
        await up.stop()


async def _bounces(s: Running, address: str, n: int) -> bool:
    return len(await s.spool.suppressions.bounces_of(address)) >= n


async def _settled(s: Running, qid: str) -> bool:
    done = {RecipientStatus.SENT, RecipientStatus.SUPPRESSED, RecipientStatus.FAILED}
    return all(st in done for st in (await statuses(s, qid)).values())


async def _status_is(s: Running, qid: str, rcpt: str, want: RecipientStatus) -> bool:
    return (await statuses(s, qid)).get(rcpt) is want


async def test_refuse_suppressed_answers_550_at_rcpt_and_keeps_the_others(
    sluice: SluiceFactory,
) -> None:
    up = await TestUpstream().start()
    try:
        async with sluice([provider_for(up)], smtp={"refuse_suppressed": True}) as s:
            await s.spool.suppressions.add("gone@example.net", reason="bounced 3 times")
            await s.spool.suppressions.add("reader@example.net", scope="news", source="api")
            refused, _ = await smtp_send(
                s.port,
                "app@example.org",
                ["gone@example.net", "ok@example.net", "reader@example.net"],
                message("hello"),
            )
            # Global entries are refused at RCPT; a scoped one cannot be (no stream yet).
            assert set(refused) == {"gone@example.net"}
            code, text = refused["gone@example.net"]
            assert code == 550 and "suppression list (source: manual)" in text
            assert text.isascii()
            (got,) = await up.wait_for(1)
            assert got.recipients == ["ok@example.net", "reader@example.net"]
    finally:
        await up.stop()


@pytest.mark.parametrize("fault", ["down", "silent"])
async def test_a_bad_bounce_mailbox_never_holds_up_delivery(
    sluice: SluiceFactory, fault: str
) -> None:
    """Down (connection refused) or silent (accepts, never greets): mail still flows."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = 1 if fault == "down" else silent.sockets[0].getsockname()[1]
    mailbox = {
        "host": "127.0.0.1",
        "port": port,
        "encryption": "none",
        "username": "bounces",
        "password": PASSWORD,
        "poll_interval": "200ms",
        "timeout": "1s",
    }
    up = await TestUpstream().start()
    try:
        async with sluice(
            [provider_for(up)], bounces={"address": "bounces@example.org", "mailbox": mailbox}
        ) as s:
            poller = s.daemon.bounces
            assert poller is not None
            await eventually(lambda: poller.status.failures >= 1, within=20)
            qid = await send(s, ["someone@example.net"], "while the mailbox is bad")
            await up.wait_for(1, within=10)
            await eventually(
                lambda: _status_is(s, qid, "someone@example.net", RecipientStatus.SENT)
            )
            (got,) = up.messages
            assert got.sender == "bounces@example.org"  # the bounce address is the Return-Path
            status = s.daemon.admin_status()
            assert status.bounce_mailbox and status.bounce_mailbox_error
    finally:
        await up.stop()
        silent.close()
        await silent.wait_closed()


async def test_a_dsn_read_from_the_mailbox_posts_bounced_and_suppressed(
    sluice: SluiceFactory, peers: Peers
) -> None:
    """Webhooks: the poller's bounce, and the suppression it caused, each posted once."""
    rx = await WebhookReceiver().start()
    notify = {
        "webhooks": [{"url": rx.url, "secret": "whsec-bounce", "events": ["bounced", "suppressed"]}]
    }
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    async with sluice([provider], notify=notify, **sections(peers, threshold=1)) as s:
        qid = await send(s, [GONE, OK], "first")
        await rx.wait_for(
            lambda hits: {h.event["type"] for h in hits} == {"bounced", "suppressed"}, within=30
        )
        await eventually(lambda: peers.delivered_to("ok") == 1, within=30)
        assert await s.spool.suppressions.active(GONE) is not None
    await rx.stop()
    events = {h.event["id"]: h.event for h in rx.accepted}
    bounced, suppressed = sorted(events.values(), key=lambda e: str(e["type"]))
    assert bounced["type"] == "bounced"
    data = bounced["data"]
    assert (data["queue_id"], data["recipient"], data["kind"], data["source"]) == (
        qid,
        GONE,
        "hard",
        "dsn",
    )
    assert data["status"] == "5.1.1" and data["diagnostic"]
    assert suppressed["type"] == "suppressed"
    assert suppressed["data"]["source"] == "bounce" and suppressed["data"]["recipient"] == GONE
    for h in rx.requests:
        assert verify(b"whsec-bounce", h.headers["x-sluice-signature"], h.body, now=time.time())


async def test_mail_spooled_by_sendmail_while_down_is_matched_to_its_bounce_without_verp(
    sluice: SluiceFactory, peers: Peers
) -> None:
    """``sluice sendmail`` writes the spool itself; Postfix's DSN still finds the message.

    Without VERP the only link from a bounce to its message is Sluice's
    ``Received:`` line in the returned header (``relay.received``): the line
    ``sluice sendmail`` writes must read back like the listener's.
    """
    provider = {"id": "mx", "host": "127.0.0.1", "port": peers.mx.port, "encryption": "none"}
    settings = sections(peers, verp=False)
    async with sluice([provider], **settings) as s:
        config_path = s.config_path  # the spool exists, as after installation
    # The daemon is stopped: sendmail cannot connect, and writes the spool.
    rc, _out, err = await run_cli(
        "sendmail",
        "-v",
        "-i",
        "-f",
        "app@example.org",
        GONE,
        stdin=b"From: app@example.org\nSubject: from cron\n\nthe daemon was down\n",
        env={"SLUICE_CONFIG": str(config_path)},
    )
    assert rc == 0, err
    found = re.search(r"queued as ([0-9A-F]{16}) ", err)
    assert found is not None, err
    qid = found.group(1)
    async with sluice([provider], **settings) as s:
        book = s.spool.suppressions
        # Delivered when the daemon starts; Postfix takes it (250), then bounces it.
        await eventually(lambda: _bounces(s, GONE, 1), within=60)
        (bounce,) = await book.bounces_of(GONE)
        assert (bounce.queue_id, bounce.source, bounce.kind) == (qid, "dsn", "hard")
        detail = await s.spool.get(qid)
        assert b"(Sluice sendmail, uid " in await s.spool.raw(qid)
        gone_log = [a for a in detail.attempts if a.email == GONE]
        assert [a.status for a in gone_log] == [AttemptStatus.SUCCESS, AttemptStatus.BOUNCED]
        assert "5.1.1" in gone_log[-1].reason
