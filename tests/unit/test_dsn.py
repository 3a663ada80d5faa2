"""RFC 3464 DSNs: read back by the stdlib parser and by flufl.bounce; who gets none."""

from __future__ import annotations

import email

import pytest
from flufl.bounce import all_failures, scan_message

from relay.bounces.dsn import read_bounce
from relay.message import HeaderBlock
from relay.notify.dsn import DsnKind, DsnRecipient, build_dsn, dsn_refusal
from relay.received import queue_id_from_received, received_header
from tests.dsn_report import read_report

ORIGINAL = (
    b"Received: from app (localhost [127.0.0.1]) by sluice.test\r\n"
    b"From: App <app@sender.test>\r\n"
    b"To: bad@example.net, slow@example.net\r\n"
    b"Subject: Invoice \xc3\xa9t\xc3\xa9\r\n"
    b"Message-ID: <orig-1@sender.test>\r\n"
    b"\r\n"
    b"secret body text that must not be returned\r\n"
)
ARRIVAL = 1_700_000_000.0
DSN_QID = "18BCFE5C0A0B0C0D"
NOW = ARRIVAL + 120


def _dsn(kind: DsnKind, recipients: list[DsnRecipient]) -> bytes:
    return build_dsn(
        kind=kind,
        original=ORIGINAL,
        sender="app@sender.test",
        recipients=recipients,
        hostname="sluice.test",
        queue_id="18BCFE5C00012AB",
        dsn_queue_id=DSN_QID,
        arrival=ARRIVAL,
        now=NOW,
    )


def test_failed_dsn_is_rfc3464_multipart_report() -> None:
    raw = _dsn(
        DsnKind.FAILED,
        [
            DsnRecipient(
                "bad@example.net", "failed", 550, "5.1.1 <bad@example.net>: no such user", NOW
            ),
            DsnRecipient("slow@example.net", "failed", None, "4.4.7 gave up after 432000s", NOW),
        ],
    )
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    report = read_report(raw)
    msg = report.message
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"] == "app@sender.test"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@sluice.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert report.types == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert "<bad@example.net>: 5.1.1" in report.human
    per_message, bad, slow = report.blocks
    assert per_message["Reporting-MTA"] == "dns; sluice.test"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert bad["Final-Recipient"] == "rfc822; bad@example.net"
    assert bad["Action"] == "failed"
    assert bad["Status"] == "5.1.1"
    assert bad["Diagnostic-Code"] == "smtp; 550 5.1.1 <bad@example.net>: no such user"
    assert bad["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:15:20 +0000"
    assert slow["Status"] == "4.4.7"
    assert slow["Diagnostic-Code"].startswith("X-Sluice; 4.4.7 gave up")
    # The header comes back (UTF-8 intact, readable), the body does not.
    returned = report.returned
    assert "Subject: Invoice été".encode() in returned
    assert b"Message-ID: <orig-1@sender.test>" in returned
    assert b"secret body" not in raw


def test_flufl_bounce_finds_the_permanent_failures() -> None:
    raw = _dsn(
        DsnKind.FAILED,
        [DsnRecipient("bad@example.net", "failed", 550, "5.1.1 no such user", NOW)],
    )
    msg = email.message_from_bytes(raw)
    temporary, permanent = all_failures(msg)
    assert permanent == {b"bad@example.net"}
    assert temporary == set()
    assert scan_message(msg) == {b"bad@example.net"}


def test_delay_warning_says_delayed_and_until_when() -> None:
    raw = _dsn(
        DsnKind.DELAYED,
        [
            DsnRecipient(
                "slow@example.net",
                "delayed",
                451,
                "4.3.0 try later",
                NOW,
                retry_until=ARRIVAL + 5 * 86400,
            )
        ],
    )
    report = read_report(raw)
    assert report.message["Subject"] == "Delayed Mail (still being retried)"
    _per_message, slow = report.blocks
    assert slow["Action"] == "delayed"
    assert slow["Status"] == "4.3.0"
    assert slow["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    assert "THIS IS A WARNING ONLY" in report.human
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    assert permanent == set()
    assert temporary == {b"slow@example.net"}


def _head(extra: bytes = b"") -> HeaderBlock:
    return HeaderBlock(b"From: a@sender.test\r\n" + extra + b"Subject: x\r\n\r\nbody\r\n")


@pytest.mark.parametrize(
    ("sender", "extra", "enabled", "domains", "no_domains", "why"),
    [
        ("a@sender.test", b"", True, [], [], None),
        ("a@sender.test", b"", False, [], [], "DSNs are off"),
        ("a@Sender.TEST", b"", False, ["sender.test"], [], None),
        ("a@sender.test", b"", True, [], ["SENDER.test"], "no_dsn_domains"),
        # relay.address.domain_of: a trailing dot is the same domain, on either side.
        ("a@sender.test.", b"", True, [], ["sender.test"], "no_dsn_domains"),
        ("a@sender.test", b"", False, ["Sender.Test."], [], None),
        ("", b"", True, [], [], "null sender"),
        ("<>", b"", True, [], [], "null sender"),
        (
            "a@sender.test",
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
            True,
            [],
            [],
            "itself a report",
        ),
        ("a@sender.test", b"Auto-Submitted: auto-generated\r\n", True, [], [], "auto-generated"),
        ("a@sender.test", b"Auto-Submitted: no\r\n", True, [], [], None),
    ],
)
def test_who_gets_no_dsn(
    sender: str,
    extra: bytes,
    enabled: bool,
    domains: list[str],
    no_domains: list[str],
    why: str | None,
) -> None:
    refusal = dsn_refusal(
        sender, _head(extra), enabled=enabled, domains=domains, no_domains=no_domains
    )
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal


def test_a_dsn_about_a_dsn_is_refused() -> None:
    """What Sluice sends is itself refused a DSN, even from a real sender address."""
    raw = _dsn(DsnKind.FAILED, [DsnRecipient("bad@example.net", "failed", 550, "5.1.1 x", NOW)])
    refusal = dsn_refusal(
        "someone@sender.test", HeaderBlock(raw), enabled=True, domains=[], no_domains=[]
    )
    assert refusal is not None and "report" in refusal


def test_a_dsn_carries_sluices_received_line_and_returns_the_originals() -> None:
    """relay.received on both sides: Sluice's reader finds the original in Sluice's DSN."""
    original_qid = "18BCFE5C000A1B2C"
    original = (
        received_header(
            hostname="sluice.test",
            client_ip="127.0.0.1",
            helo="app",
            queue_id=original_qid,
            protocol="ESMTP",
            recipients=["bad@example.net"],
            now=ARRIVAL,
        )
        + ORIGINAL
    )
    raw = build_dsn(
        kind=DsnKind.FAILED,
        original=original,
        sender="app@sender.test",
        recipients=[DsnRecipient("bad@example.net", "failed", 550, "5.1.1 no such user", NOW)],
        hostname="sluice.test",
        queue_id=original_qid,
        dsn_queue_id=DSN_QID,
        arrival=ARRIVAL,
        now=NOW,
    )
    # The DSN's own trace line comes first, as on every message Sluice spools.
    assert queue_id_from_received(HeaderBlock(raw).data[: HeaderBlock(raw).end]) == DSN_QID
    assert raw.startswith(b"Received: by sluice.test (Sluice) with local id " + DSN_QID.encode())
    # The bounce reader takes the returned header's line: the original message.
    report = read_bounce(raw)
    assert report is not None and report.queue_id == original_qid
    assert [f.address for f in report.failures] == ["bad@example.net"]
