"""Sluice's Received line (relay.received): every shape the writer makes, and the reader."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.received import helo_name, queue_id_from_received, received_header

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


def _unescape(kept: str) -> bytes:
    """The bytes a client sent, back from ``helo_name``'s escapes (the test's inverse)."""

    def one(m: re.Match[str]) -> str:
        if m.group() == "\\\\":
            return "\\"
        if m.group(1) is not None:
            code = int(m.group(1), 16)
            return chr(code) if code < 0x80 else chr(0xDC00 + code)
        return chr(int(m.group(2) or m.group(3), 16))

    text = re.sub(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})|\\U([0-9a-f]{8})|\\\\", one, kept)
    return text.encode("utf-8", "surrogateescape")


@given(
    st.one_of(
        st.binary(max_size=80),
        st.text(max_size=20).map(lambda t: t.encode("utf-8")),
    ).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
)
def test_helo_name_keeps_every_byte_sent_in_storable_printable_text(sent: bytes) -> None:
    """Issue #23, point 5: any bytes in HELO are kept, storable (no lone surrogate) and lossless."""
    kept = helo_name(sent.decode("utf-8", "surrogateescape"))  # as aiosmtpd decodes it
    kept.encode("utf-8")  # storable: raises on a lone surrogate
    assert kept.isprintable()
    assert _unescape(kept) == sent


def test_helo_name_escapes_bytes_and_characters_apart() -> None:
    assert helo_name(b"h\xff\xfe".decode("utf-8", "surrogateescape")) == "h\\xff\\xfe"
    assert helo_name("a\\b\x00\u0085 b\u00fccher") == "a\\\\b\\x00\\u0085 b\u00fccher"


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
        # IDNA 2008 (relay.address.domain_to_ascii); the stdlib's IDNA 2003 said "fass.de".
        ("a@faß.de", False, b"\tfor <a@xn--fa-hia.de>"),
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


QID = "0190F2A3B4C5D6E7"

#: every shape the writer makes: over SMTP (one recipient, several, no HELO,
#: SMTPUTF8), from ``sluice sendmail`` writing the spool itself, and a DSN
SHAPES = {
    "esmtp, one recipient": {
        "helo": "app.local",
        "client_ip": "192.0.2.7",
        "protocol": "ESMTP",
        "recipients": ["a@example.net"],
    },
    "smtp, a Bcc list": {
        "helo": None,
        "client_ip": "::1",
        "protocol": "SMTP",
        "recipients": ["a@example.net", "b@example.net"],
    },
    "utf8smtp": {
        "helo": "app",
        "client_ip": "127.0.0.1",
        "protocol": "UTF8SMTP",
        "recipients": ["jörg@bücher.de"],
        "utf8": True,
    },
    "sendmail, one recipient": {
        "protocol": "local",
        "recipients": ["root@host.example"],
        "local_uid": 0,
    },
    "sendmail, two recipients": {
        "protocol": "local",
        "recipients": ["a@example.net", "b@example.net"],
        "local_uid": 1000,
    },
    "a DSN (relay.notify.dsn)": {"protocol": "local", "recipients": ["app@example.org"]},
}


def _unfold(header: bytes) -> bytes:
    return header.replace(b"\r\n\t", b" ")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "returned",
    [
        pytest.param(lambda h: h, id="as written"),
        pytest.param(_unfold, id="unfolded by a remote MTA"),
        pytest.param(
            lambda h: (
                b"Received: from relay.test by mx.example.net (Postfix) with ESMTP id 4Xyz\r\n"
                + h
                + b"From: app@example.org\r\nSubject: x\r\n"
            ),
            id="under another MTA's line, in a returned header block",
        ),
    ],
)
def test_the_reader_finds_what_the_writer_wrote(
    shape: str, returned: Callable[[bytes], bytes]
) -> None:
    header = received_header(hostname="relay.test", queue_id=QID, now=NOW, **SHAPES[shape])  # type: ignore[arg-type]
    assert queue_id_from_received(returned(header)) == QID
    # The line is a header the stdlib reads as one Received field.
    msg = email.message_from_bytes(header + b"\r\nbody", policy=email.policy.SMTP)
    assert QID in str(msg["Received"])


def test_sendmail_names_the_user_who_submitted() -> None:
    header = received_header(
        hostname="relay.test",
        queue_id=QID,
        protocol="local",
        recipients=["a@example.net", "b@example.net"],
        now=NOW,
        local_uid=1000,
    )
    assert header == (
        b"Received: by relay.test (Sluice sendmail, uid 1000) with local id 0190F2A3B4C5D6E7;\r\n"
        b"\tTue, 14 Nov 2023 22:13:20 -0000\r\n"
    )


@pytest.mark.parametrize(
    "block",
    [
        b"",
        # Another MTA's line with an ID of the same shape: not Sluice's.
        b"Received: by mx.example.net (Postfix) with ESMTP id 0190F2A3B4C5D6E7\r\n",
        # Sluice's shape with an ID that is not one (lower case, too short).
        b"Received: by relay.test (Sluice) with ESMTP id 0190f2a3b4c5d6e7\r\n",
        b"Received: by relay.test (Sluice) with ESMTP id 0190F2A3\r\n",
        # The line sluice sendmail wrote before the Received line had one home.
        b"Received: by relay.test (Sluice sendmail, uid 0) id 0190F2A3B4C5D6E7;\r\n\tdate\r\n",
    ],
)
def test_the_reader_finds_nothing_else(block: bytes) -> None:
    assert queue_id_from_received(block) is None
