from __future__ import annotations

import email
import email.policy

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from relay.message import bare_line_ending, extract_subject, received_header, wire_data

NOW = 1_700_000_000.0


def test_received_header_for_one_recipient_names_it() -> None:
    h = received_header(
        helo="app.local",
        client_ip="127.0.0.1",
        hostname="relay.test",
        queue_id="Q1",
        protocol="ESMTP",
        recipients=["a@b.c"],
        now=NOW,
    )
    assert h == (
        b"Received: from app.local ([127.0.0.1])\r\n"
        b"\tby relay.test (Sluice) with ESMTP id Q1\r\n"
        b"\tfor <a@b.c>; Tue, 14 Nov 2023 22:13:20 -0000\r\n"
    )
    msg = email.message_from_bytes(h + b"\r\nbody", policy=email.policy.SMTP)
    assert "relay.test" in str(msg["Received"])


def test_received_header_hides_a_recipient_list() -> None:
    h = received_header(
        helo=None,
        client_ip="::1",
        hostname="relay.test",
        queue_id="Q2",
        protocol="SMTP",
        recipients=["a@b.c", "secret-bcc@b.c"],
        now=NOW,
    )
    assert b"secret-bcc" not in h
    assert h.startswith(b"Received: from unknown ([::1])\r\n")


def test_received_header_neutralises_hostile_helo() -> None:
    h = received_header(
        helo="evil\r\nBcc: x@y.z",
        client_ip="127.0.0.1",
        hostname="r",
        queue_id="Q",
        protocol="ESMTP",
        recipients=["a@b.c"],
        now=NOW,
    )
    assert h.count(b"\r\n") == 3  # still exactly three folded lines
    assert b"\r\nBcc" not in h


def _for_clause(recipient: str, *, utf8: bool) -> bytes:
    h = received_header(
        helo="app",
        client_ip="127.0.0.1",
        hostname="r",
        queue_id="Q",
        protocol="UTF8SMTP" if utf8 else "ESMTP",
        recipients=[recipient],
        now=NOW,
        utf8=utf8,
    )
    assert h.count(b"\r\n") == 3 and h.endswith(b"\r\n")
    return h.split(b"\r\n")[2].split(b";")[0]


@pytest.mark.parametrize(
    ("recipient", "utf8", "clause"),
    [
        # Issue #13 item 11: was "for <j?rg@b?cher.de>".
        ("jörg@bücher.de", True, "\tfor <jörg@bücher.de>".encode()),
        ("用户@例子.广告", True, "\tfor <用户@例子.广告>".encode()),
        # Without SMTPUTF8 the listener refuses a non-ASCII address; were one
        # to come, its domain would be an A-label.
        ("a@bücher.de", False, b"\tfor <a@xn--bcher-kva.de>"),
        ('"john doe"@example.org', False, b'\tfor <"john doe"@example.org>'),
        # Line breaks and controls never reach the header, whatever the caller passes.
        ("a\r\nBcc: x@y.z", True, b"\tfor <a??Bcc: x@y.z>"),
        ("a\x00\x7f@b.c", False, b"\tfor <a??@b.c>"),
    ],
)
def test_received_header_keeps_the_recipient_intact(
    recipient: str, utf8: bool, clause: bytes
) -> None:
    assert _for_clause(recipient, utf8=utf8) == clause


@given(st.text(max_size=60), st.booleans())
def test_received_header_is_always_three_lines(recipient: str, utf8: bool) -> None:
    clause = _for_clause(recipient, utf8=utf8)
    assert b"\r" not in clause and b"\n" not in clause
    if not utf8:
        assert clause.isascii()


@pytest.mark.parametrize(
    ("data", "subject"),
    [
        (b"Subject: hello\r\n\r\nbody", "hello"),
        (b"X: 1\r\nsubject:   folded\r\n  twice\r\n\r\n", "folded twice"),
        (b"Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n", "café"),
        (b"From: a\r\n\r\nSubject: in body, not a header\r\n", ""),
        (b"Subject: <script>alert(1)</script>\r\n\r\n", "<script>alert(1)</script>"),
        (b"Subject: =?bogus?q?x?=\r\n\r\n", "=?bogus?q?x?="),
    ],
)
def test_extract_subject(data: bytes, subject: str) -> None:
    assert extract_subject(data) == subject


@pytest.mark.parametrize(
    ("data", "offset"),
    [(b"a\r\nb\r\n", None), (b"a\nb\r\n", 1), (b"a\r\nb\rc", 4), (b"ok\r\n\n.\n", 4)],
)
def test_bare_line_ending(data: bytes, offset: int | None) -> None:
    assert bare_line_ending(data) == offset


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".lead\r\n.\r\n..two", b"..lead\r\n..\r\n...two\r\n.\r\n"),
        (b"bare\nlf\rcr", b"bare\r\nlf\r\ncr\r\n.\r\n"),
        (b"", b".\r\n"),  # nothing to send: just the end line
    ],
)
def test_wire_data(data: bytes, wire: bytes) -> None:
    assert b"".join(wire_data(data)) == wire


# Bytes weighted towards what matters to line endings and dot-stuffing.
_MESSAGE_BYTES = st.lists(
    st.sampled_from([b"\r\n", b"\n", b"\r", b".", b"..", b"a", b" ", b"\x00", b"\xff"]),
    min_size=1,
    max_size=40,
).map(b"".join)


@given(_MESSAGE_BYTES)
def test_wire_data_matches_aiosmtplib(data: bytes) -> None:
    """The same bytes on the wire as aiosmtplib's own ``SMTP.data`` would send."""
    reference = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert b"".join(wire_data(data)) == reference
