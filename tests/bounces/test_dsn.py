"""Reading bounces: real providers' documented shapes, auto-replies, hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.bounces.dsn import BounceReport, UnreadableBounce, read_bounce
from relay.verp import parse, token_of, verp_address
from tests.bounces.genuine import about

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"\n", b"\r\n")


@pytest.mark.parametrize(
    ("name", "address", "kind", "status", "words", "queue_id", "fmt"),
    [
        # RFC 3464 reports, field by field.
        ("gmail.eml", "nobody.here@gmail.com", "hard", "5.1.1", "does not exist",
         "0190F2A3B4C5D6E7", "dsn"),
        ("m365.eml", "gone@contoso.com", "hard", "5.1.10", "RecipientNotFound",
         "0190F2A3B4C5D6E8", "dsn"),
        ("ses.eml", "unknown-user@example.net", "hard", "5.1.1", "user unknown",
         "0190F2A3B4C5D6E9", "dsn"),
        ("delayed.eml", "slow@example.net", "soft", "4.4.1", "Connection timed out", None, "dsn"),
        # Not RFC 3464: Mailman's detectors (flufl.bounce).
        ("exim.eml", "olduser@example.com", "hard", "5.1.1", "User unknown",
         "0190F2A3B4C5D6EA", "heuristic"),
        ("qmail.eml", "nosuch@qmail.example.net", "hard", "5.1.1", "no mailbox here",
         "0190F2A3B4C5D6EB", "heuristic"),
    ],
)  # fmt: skip
def test_real_bounce_shapes(
    name: str,
    address: str,
    kind: str,
    status: str,
    words: str,
    queue_id: str | None,
    fmt: str,
) -> None:
    report = read_bounce(load(name))
    assert isinstance(report, BounceReport)
    (failure,) = report.failures
    assert failure.address == address
    assert failure.kind == kind
    assert failure.status == status
    assert words in failure.diagnostic
    # The returned headers carry Sluice's Received line: the queue ID it answers.
    assert report.queue_id == queue_id
    assert report.format == fmt


KEY = b"k" * 32


def test_the_bounce_names_the_verp_address_it_was_sent_to() -> None:
    signed = verp_address("bounces@sluice.example", "0190F2A3B4C5D6E7", 42, KEY)
    report = read_bounce(about(load("gmail.eml"), "0190F2A3B4C5D6E7", signed))
    assert report is not None
    assert signed in report.delivered_to
    (verp,) = {parse(a, "bounces@sluice.example", KEY) for a in report.delivered_to} - {None}
    assert verp == ("0190F2A3B4C5D6E7", 42)
    # The sample as stored carries a token of before signing: it is read, never accepted.
    old = read_bounce(load("gmail.eml"))
    assert old is not None and "bounces+0190F2A3B4C5D6E7-42@sluice.example" in old.delivered_to
    assert {parse(a, "bounces@sluice.example", KEY) for a in old.delivered_to} == {None}
    assert token_of("bounces+0190F2A3B4C5D6E7-42@sluice.example", "bounces@sluice.example")


def test_an_out_of_office_reply_is_not_a_bounce() -> None:
    assert read_bounce(load("out-of-office.eml")) is None


def test_ordinary_mail_is_not_a_bounce() -> None:
    mail = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
    assert read_bounce(mail) is None


def test_a_delivered_action_is_no_failure() -> None:
    raw = (
        load("ses.eml")
        .replace(b"Action: failed", b"Action: delivered")
        .replace(b"Status: 5.1.1", b"Status: 2.0.0")
    )
    report = read_bounce(raw)
    assert report is not None and report.failures == []


def test_a_huge_bounce_is_refused_before_parsing() -> None:
    with pytest.raises(UnreadableBounce, match="over the"):
        read_bounce(b"x" * 2000, max_size=1000)


def test_deeply_nested_mime_is_refused() -> None:
    depth = 60
    head = b"From: MAILER-DAEMON@x.example\r\nMIME-Version: 1.0\r\n"
    body = b""
    for i in range(depth):
        body += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    body += b"Content-Type: text/plain\r\n\r\nbottom\r\n"
    for i in reversed(range(depth)):
        body += f"--b{i}--\r\n".encode()
    with pytest.raises(UnreadableBounce, match="nested"):
        read_bounce(head + body)


def test_a_bad_charset_is_read_anyway() -> None:
    raw = load("exim.eml").replace(
        b"Auto-Submitted: auto-replied",
        b"Auto-Submitted: auto-replied\r\nContent-Type: text/plain; charset=x-no-such-charset",
    )
    raw = raw.replace(b"This message was created", b"\xff\xfe This message was created")
    report = read_bounce(raw)
    assert report is not None
    assert [f.address for f in report.failures] == ["olduser@example.com"]


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=4000))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        read_bounce(data)
    except UnreadableBounce:
        pass


@given(
    st.from_regex(r"[0-9A-F]{16}", fullmatch=True),
    st.integers(min_value=1, max_value=10**15),
)
def test_verp_round_trip(queue_id: str, rid: int) -> None:
    address = verp_address("Bounces@Example.COM", queue_id, rid, KEY)
    assert parse(address, "bounces@example.com", KEY) == (queue_id, rid)
    assert parse(address, "other@example.com", KEY) is None
    assert parse("bounces@example.com", "bounces@example.com", KEY) is None
    # relay.address.domain_of: a trailing dot on the domain is the same domain.
    assert parse(address.replace(".COM", ".com."), "bounces@example.com", KEY) == (queue_id, rid)
