from __future__ import annotations

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from relay.message import (
    HeaderBlock,
    bare_line_ending,
    extract_subject,
    field_name,
    field_value,
    wire_data,
)


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


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        (b"Subject: hello\r\n", "subject", b"hello"),
        (b"X-Sluice-Provider:ses\r\n", "x-sluice-provider", b"ses"),
        (b"Subject : obsolete blanks\r\n", "subject", b"obsolete blanks"),  # RFC 5322 § 4.5
        (b"To: a@b.c,\r\n d@e.f\r\n", "to", b"a@b.c,\r\n d@e.f"),  # folding kept
        (b"From someone Tue Nov 14\r\n", "", b""),  # an mbox separator is no field
        (b": no name\r\n", "", b""),
        (b" continued\r\n", "", b""),
        (b"body text\r\n", "", b""),
    ],
)
def test_field_name_and_value(line: bytes, name: str, value: bytes) -> None:
    """One reading of a field name: the header block, sendmail input, transfer entities."""
    assert field_name(line) == name
    if name:
        assert field_value(line) == value


def test_sendmail_reads_fields_as_the_header_block_does() -> None:
    """``sluice sendmail -t`` takes recipients from the fields HeaderBlock would name."""
    from relay.inbound.sendmail_args import Options, prepare

    raw = b"To : a@example.net\nSubject: s\n\nbody\n"
    prepared = prepare(raw, Options(from_headers=True), sender="me@x.test", domain="x.test", now=0)
    assert prepared.recipients == ["a@example.net"]
    head = HeaderBlock(prepared.data)
    assert head.value("to") == "a@example.net" and "to" in head.names
