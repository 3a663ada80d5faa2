"""DSNs end to end: a real Sluice, a fake upstream that refuses one recipient,
and the sender's mail routed to a second upstream where the DSN must arrive."""

from __future__ import annotations

import email
from typing import Any

from flufl.bounce import all_failures

from relay.model import RecipientStatus
from tests.conftest import Running, SluiceFactory, eventually, provider_for, smtp_send
from tests.dsn_report import read_report
from tests.upstream import TestUpstream

BODY = (
    b"From: App <app@sender.test>\r\n"
    b"To: good@example.net, bad@example.net\r\n"
    b"Subject: monthly invoice\r\n"
    b"\r\n"
    b"hello\r\n"
)


def _setup(up: TestUpstream, senders: TestUpstream, **notify: Any) -> dict[str, Any]:
    """Mail to example.net goes to ``up``; mail to the sender's domain to ``senders``."""
    return {
        "providers": [provider_for(up, "main"), provider_for(senders, "home")],
        "routes": [{"recipient_domain": ["sender.test"], "providers": ["home"]}],
        "notify": {"dsn": True, **notify},
    }


async def _dsn_recipients(s: Running) -> list[RecipientStatus]:
    """States of the recipients of DSNs in the spool (mail from <>)."""
    return [e.status for e in await s.spool.list_queue() if e.sender == ""]


async def test_refused_recipient_gets_the_sender_a_dsn(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 <bad@example.net>: no such user"
    async with sluice(**_setup(upstream, upstream2)) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net", "bad@example.net"], BODY)
        (dsn,) = await upstream2.wait_for(1)
        await s.wait_idle()
    assert [m.recipients for m in upstream.messages] == [["good@example.net"]]
    assert dsn.sender == ""  # the null reverse-path
    assert dsn.recipients == ["app@sender.test"]
    report = read_report(dsn.data)
    msg = report.message
    assert msg.get_content_type() == "multipart/report"
    assert msg["Auto-Submitted"] == "auto-replied"
    per_message, bad = report.blocks
    assert per_message["Reporting-MTA"] == "dns; sluice.test"
    assert per_message["Arrival-Date"]
    assert bad["Final-Recipient"] == "rfc822; bad@example.net"
    assert bad["Action"] == "failed"
    assert bad["Status"] == "5.1.1"
    assert bad["Diagnostic-Code"] == "smtp; 550 5.1.1 <bad@example.net>: no such user"
    assert bad["Last-Attempt-Date"]
    assert b"Subject: monthly invoice" in report.returned
    _temporary, permanent = all_failures(email.message_from_bytes(dsn.data))
    assert permanent == {b"bad@example.net"}


async def test_no_dsn_loop_when_the_senders_domain_bounces(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    upstream2.reply["RCPT:app@sender.test"] = "550 5.1.1 the sender's mailbox is gone too"
    async with sluice(**_setup(upstream, upstream2)) as s:
        await smtp_send(s.port, "app@sender.test", ["bad@example.net"], BODY)
        # The DSN was made, tried, and failed for good ...
        await eventually(lambda: _has(s, [RecipientStatus.FAILED]))
        await s.wait_idle()
        entries = await s.spool.list_queue()
    # ... and nothing was made about it: one message, one DSN, nothing more.
    assert sorted((e.sender, e.email, e.status) for e in entries) == [
        ("", "app@sender.test", RecipientStatus.FAILED),
        ("app@sender.test", "bad@example.net", RecipientStatus.FAILED),
    ]
    assert upstream2.messages == []


async def _has(s: Running, states: list[RecipientStatus]) -> bool:
    return await _dsn_recipients(s) == states


async def test_dsns_per_sender_are_rate_limited(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    # Four different refused addresses: three hard bounces of one address would
    # suppress it, and whether the fourth message were claimed before or after
    # the third's outcome would decide if it failed or was skipped.
    bad = [f"bad{i}@example.net" for i in range(4)]
    for address in bad:
        upstream.reply[f"RCPT:{address}"] = "550 5.1.1 no such user"
    async with sluice(**_setup(upstream, upstream2, dsn_per_hour=2)) as s:
        for address in bad:
            await smtp_send(s.port, "app@sender.test", [address], BODY)
        await eventually(lambda: _failed_count(s, "app@sender.test", 4), within=20)
        await s.wait_idle()
        await upstream2.wait_for(2)
        dsns = await _dsn_recipients(s)
    assert len(dsns) == 2
    assert len(upstream2.messages) == 2


async def _failed_count(s: Running, sender: str, n: int) -> bool:
    entries = await s.spool.list_queue()
    return sum(e.sender == sender and e.status is RecipientStatus.FAILED for e in entries) == n


async def test_delay_warning_once_then_failure(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    upstream.reply["RCPT:slow@example.net"] = "451 4.3.0 mailbox busy, try later"
    async with sluice(
        **_setup(upstream, upstream2, delay_warning_after="1s"),
        retry={"first_delay": "0.3s", "max_delay": "0.3s", "give_up_after": "3s", "jitter": 0},
    ) as s:
        await smtp_send(s.port, "app@sender.test", ["slow@example.net"], BODY)
        # A warning once it has waited a second, then the failure when it expires.
        await upstream2.wait_for(2, within=20)
        await s.wait_idle()
    warning, failure = (read_report(m.data) for m in upstream2.messages)
    assert warning.message["Subject"] == "Delayed Mail (still being retried)"
    assert warning.blocks[1]["Action"] == "delayed"
    assert failure.message["Subject"] == "Undelivered Mail Returned to Sender"
    rcpt = failure.blocks[1]
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "4.4.7"  # RFC 3463: delivery time expired
    assert "451 4.3.0 mailbox busy" in rcpt["Diagnostic-Code"]
    assert len(upstream2.messages) == 2  # one warning, however many retries


async def test_an_archive_copy_that_fails_sends_the_sender_no_dsn(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    """archive_bcc is the operator's copy (Postfix adds always_bcc with NOTIFY=NONE)."""
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 <bad@example.net>: no such user"
    upstream.reply["RCPT:archive@example.net"] = "550 5.1.1 <archive@example.net>: gone"
    setup = {**_setup(upstream, upstream2), "archive_bcc": {"to": "archive@example.net"}}
    async with sluice(**setup) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net", "bad@example.net"], BODY)
        (dsn,) = await upstream2.wait_for(1)
        await s.wait_idle()
        statuses = {e.email: e.status for e in await s.spool.list_queue() if e.sender}
    assert statuses["archive@example.net"] is RecipientStatus.FAILED
    blocks = read_report(dsn.data).blocks[1:]
    assert [b["Final-Recipient"] for b in blocks] == ["rfc822; bad@example.net"]
