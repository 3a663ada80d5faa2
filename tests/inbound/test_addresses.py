"""Address syntax at MAIL and RCPT through a socket: 5xx at once, never 250-then-fail or 451."""

from __future__ import annotations

import logging

import pytest

from relay.address import address_problem
from tests.conftest import SluiceFactory, provider_for, raw_session
from tests.inbound.test_listener import HELLO, still_works, stored
from tests.upstream import TestUpstream

MAIL_OK = b"MAIL FROM:<app@example.org>\r\n"


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        # An unterminated "<": aiosmtpd raised IndexError (451 + a traceback).
        ([b"MAIL FROM:<\r\n"], "501 5.1.7"),
        ([MAIL_OK, b"RCPT TO:<a@[1.2.3.4>\r\n"], "501 5.1.3"),
        ([b"MAIL FROM:<a@example.org\r\n"], "501 5.1.7"),
        # Control characters and NUL: 250 before, then every recipient failed at delivery.
        ([b"MAIL FROM:<a\x01b@example.org>\r\n"], "501 5.1.7"),
        ([MAIL_OK, b"RCPT TO:<a\x00b@example.net>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a\x7f@example.net>\r\n"], "501 5.1.3"),
        # Dot-atom and domain rules, lengths (RFC 5321 section 4.5.3.1).
        ([MAIL_OK, b"RCPT TO:<a..b@example.net>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<.a@example.net>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a.@example.net>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a@-x>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a@x_y>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<" + b"l" * 65 + b"@example.net>\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a@" + b".".join([b"d" * 63] * 4) + b">\r\n"], "501 5.1.3"),
        ([MAIL_OK, b"RCPT TO:<a(comment)@example.net>\r\n"], "501 5.1.3"),
        # Non-ASCII without SMTPUTF8 (RFC 6531 section 3.7.4.1).
        ([b"MAIL FROM:<j\xc3\xb6rg@example.org>\r\n"], "553 5.6.7"),
        ([MAIL_OK, b"RCPT TO:<j\xc3\xb6rg@example.net>\r\n"], "553 5.6.7"),
        ([MAIL_OK, b"RCPT TO:<a@b\xc3\xbccher.de>\r\n"], "553 5.6.7"),
        # Undecodable bytes, even with SMTPUTF8.
        ([b"MAIL FROM:<a\xff@example.org> SMTPUTF8\r\n"], "501 5.1.7"),
    ],
)
async def test_bad_addresses_get_5xx_at_once(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    caplog: pytest.LogCaptureFixture,
    commands: list[bytes],
    code: str,
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        with caplog.at_level(logging.INFO):
            replies = await raw_session(s.port, [b"EHLO x\r\n", *commands, b"QUIT\r\n"])
        assert replies[-2].startswith(code), replies
        assert replies[-2].isascii()
        assert replies[-1].startswith("221")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert await stored(s) == 0
        await still_works(s, upstream, 1)


@pytest.mark.parametrize(
    "recipient",
    [
        "postmaster@[IPv6:::1]",  # was 501
        "postmaster@[127.0.0.1]",
        '"john doe"@example.net',
        # root@localhost is a local name: refused without an alias (test_address_rules.py)
        "root@host.localhost",
        "user@corp.local",
        "x" * 64 + "@example.net",
    ],
)
async def test_valid_addresses_are_accepted_and_kept_as_sent(
    sluice: SluiceFactory, upstream: TestUpstream, recipient: str
) -> None:
    assert address_problem(recipient, smtputf8=False) is None
    async with sluice([provider_for(upstream)]) as s:
        replies = await raw_session(
            s.port,
            [
                b"EHLO x\r\n",
                MAIL_OK,
                f"RCPT TO:<{recipient}>\r\n".encode(),
                b"DATA\r\n",
                HELLO + b".\r\n",
                b"QUIT\r\n",
            ],
        )
        assert replies[3].startswith("250 2.1.5"), replies
        assert "queued as" in replies[5], replies
        (got,) = await upstream.wait_for(1)
    assert got.recipients == [recipient]


async def test_utf8_addresses_with_smtputf8_keep_the_received_header_intact(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        replies = await raw_session(
            s.port,
            [
                b"EHLO x\r\n",
                "MAIL FROM:<jörg@exämple.org> SMTPUTF8\r\n".encode(),
                "RCPT TO:<jürgen@bücher.de>\r\n".encode(),
                b"DATA\r\n",
                HELLO + b".\r\n",
                b"QUIT\r\n",
            ],
        )
        assert "queued as" in replies[5], replies
        (got,) = await upstream.wait_for(1)
    assert got.sender == "jörg@exämple.org"
    assert got.recipients == ["jürgen@bücher.de"]
    # Issue #13 item 11: was "for <j?rgen@b?cher.de>".
    assert "for <jürgen@bücher.de>".encode() in got.data
    assert b"with UTF8SMTP" in got.data


async def test_hostile_helo_cannot_inject_header_lines(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        replies = await raw_session(
            s.port,
            [
                b"EHLO evil\rX-Injected: yes\r\n",
                MAIL_OK,
                b"RCPT TO:<a@example.net>\r\n",
                b"DATA\r\n",
                HELLO + b".\r\n",
            ],
        )
        assert "queued as" in replies[5], replies
        (got,) = await upstream.wait_for(1)
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert b"\rX-Injected" not in head and b"\nX-Injected" not in head
    # The CR is kept escaped (relay.received.helo_name), the space made "?" by the trace line.
    assert b"from evil\\x0dX-Injected:?yes" in head
