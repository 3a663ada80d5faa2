"""Every reply the listener can send is ASCII (issue #13, item 3: a 550 held a "§").

RFC 5321 section 4.2 makes reply text ASCII; a client that did not ask for
SMTPUTF8 may choke on anything else. Three nets: every reply text in our
sources and aiosmtpd's, and every reply of a live session fed non-ASCII
input on purpose (tests/inbound/test_fuzz_listener.py adds random sessions).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import aiosmtpd.smtp
import pytest

import relay.inbound.aiosmtpd_seams
import relay.inbound.data
import relay.inbound.listener
from tests.conftest import SluiceFactory, provider_for, raw_session
from tests.upstream import TestUpstream

REPLY_TEXT = re.compile(r"^[2-5]\d\d[ -]")


def _reply_literals(source: str) -> list[str]:
    """String constants (and f-string pieces) of ``source`` that start like an SMTP reply."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if REPLY_TEXT.match(node.value):
                out.append(node.value)
    return out


@pytest.mark.parametrize(
    "module",
    [relay.inbound.listener, relay.inbound.aiosmtpd_seams, relay.inbound.data, aiosmtpd.smtp],
    ids=lambda m: m.__name__,
)
def test_every_reply_text_in_the_source_is_ascii(module: object) -> None:
    replies = _reply_literals(Path(inspect.getfile(module)).read_text())  # type: ignore[arg-type]
    assert replies  # the scan found them
    assert [r for r in replies if not r.isascii()] == []


def test_the_named_replies_are_ascii() -> None:
    named = {
        name: value
        for mod in (relay.inbound.listener, relay.inbound.aiosmtpd_seams, relay.inbound.data)
        for name, value in vars(mod).items()
        if name.startswith("R_")
    }
    assert {
        "R_BARE_LF",
        "R_BAD_RCPT",
        "R_TOO_MUCH_DATA",
        "R_TOO_MANY_CONNECTIONS",
        "R_NEED_RCPT",
    } <= set(named)
    for name, value in named.items():
        assert isinstance(value, str) and value.isascii(), name
        assert REPLY_TEXT.match(value), name


async def test_a_session_full_of_non_ascii_gets_only_ascii_replies(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    commands = [
        "EHLO hôte.example\r\n",
        "HELP dönerbude\r\n",
        "VRFY jörg@example.org\r\n",
        "NOOP ü\r\n",
        "FRÖB\r\n",
        "MAIL FROM:<jörg@example.org>\r\n",
        "MAIL FROM:<j\udcffrg@example.org> SMTPUTF8\r\n",
        "MAIL FROM:<a@example.org> BODY=ÜBER\r\n",
        "MAIL FROM:<a@example.org>\r\n",
        "RCPT TO:<ü@ü>\r\n",
        "RCPT TO:<a@[IPv6:ö]>\r\n",
        "RCPT TO:<a@b.example> NOTIFY=ÄÖ\r\n",
        "RCPT TO:<ok@example.net>\r\n",
        "DATA ö\r\n",
        "DATA\r\n",
        "Subject: é\r\n\r\nbare\nline\r\n.\r\n",  # 550 with the bare LF's offset
        "RSET ß\r\n",
        "MAIL FROM:<a@example.org> SIZE=999999999999\r\n",
        "AUTH PLAIN ö\r\n",
        "STARTTLS\r\n",
        "EHLO " + "é" * 300 + "\r\n",
        "QUIT\r\n",
    ]
    async with sluice([provider_for(upstream)], smtp={"max_message_size": "1MiB"}) as s:
        replies = await raw_session(
            s.port, [c.encode("utf-8", "surrogateescape") for c in commands]
        )
    assert len(replies) == len(commands) + 1
    assert any(r.startswith("550 5.6.0") for r in replies), replies
    assert [r for r in replies if not r.isascii()] == []


async def test_a_client_of_unrecognized_commands_is_closed_on_with_421(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """aiosmtpd closes after a session's fifth unknown command: the client hears 421, not 502.

    RFC 5321 section 3.8: a server that closes the channel answers 421, as
    Postfix's smtpd does at its error limit; a 5xx would read as a refusal.
    """
    async with sluice([provider_for(upstream)]) as s:
        # The fuzz test's find: NUL bytes and a HELO without its space count too.
        replies = await raw_session(
            s.port, [b"FROB\r\n", b"\x00\r\n", b"HELO<>\r\n"] + [b"FROB\r\n"] * 2
        )
        # and the listener serves the next client as before
        after = await raw_session(s.port, [b"NOOP\r\n", b"QUIT\r\n"])
    assert [r[:4] for r in replies[1:5]] == ["500 "] * 4, replies
    assert replies[5] == relay.inbound.aiosmtpd_seams.R_TOO_MANY_BOGUS, replies
    assert [r[:4] for r in after] == ["220 ", "250 ", "221 "], after
