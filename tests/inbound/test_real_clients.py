"""Real SMTP clients nobody here wrote (swaks, msmtp, PHP's mail()) sending to Sluice.

Issue #13: a body line of 1,000+ octets was answered ``500 Line too long``
(PHP's mail() then returned false and the mail was lost); msmtp gives up the
whole message at the first ``452``, so 101 recipients failed against the old
limit of 100; bad addresses must be refused at MAIL/RCPT with a 5xx.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.conftest import Running, SluiceFactory, provider_for
from tests.peers import require, run_peer
from tests.upstream import TestUpstream

QUEUED = re.compile(r"queued as (\S+)")


async def _stored(s: Running, output: str) -> bytes:
    """The spooled bytes of the message whose queue ID ``output`` names, less our Received."""
    match = QUEUED.search(output)
    assert match, output
    raw = await s.spool.raw(match.group(1))
    assert raw.startswith(b"Received: from ")
    # Our trace header is three folded lines; the client's bytes follow.
    return raw.split(b"\r\n", 3)[3]


def _long_line_message() -> bytes:
    # An unwrapped HTML line as PHP apps write them: 30,000 octets, 8-bit.
    html = b"<p>" + "Grüße, ".encode() * 3500 + b"</p>"
    assert len(html) > 30_000
    return (
        b"From: app@example.org\r\nTo: a@example.net\r\nSubject: long line\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n" + html + b"\r\n.dot line\r\nend\r\n"
    )


async def test_swaks_long_line_is_accepted_and_stored_byte_for_byte(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    swaks = require("swaks")
    message = _long_line_message()
    # swaks ends the data with "\r\n.\r\n" itself: the file's last CRLF is that one.
    (tmp_path / "msg.eml").write_bytes(message.removesuffix(b"\r\n"))
    async with sluice([provider_for(upstream)]) as s:
        code, out = await run_peer(
            swaks,
            "--server",
            f"127.0.0.1:{s.port}",
            "--from",
            "app@example.org",
            "--to",
            "a@example.net",
            "--data",
            str(tmp_path / "msg.eml"),
            "--suppress-data",
        )
        assert code == 0, out
        assert await _stored(s, out) == message


async def test_msmtp_sends_to_150_recipients(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    msmtp = require("msmtp")
    recipients = [f"r{i}@example.net" for i in range(150)]
    message = b"From: app@example.org\r\nSubject: many\r\n\r\nto all of you\r\n"
    async with sluice([provider_for(upstream)]) as s:
        code, out = await run_peer(
            msmtp,
            "--host=127.0.0.1",
            f"--port={s.port}",
            "--auth=off",
            "--tls=off",
            "--from=app@example.org",
            *recipients,
            stdin=message,
        )
        assert code == 0, out
        (got,) = await upstream.wait_for(1)
    assert got.recipients == recipients


@pytest.mark.parametrize(
    ("option", "address", "reply"),
    [
        ("--from", "a..b@example.org", "501 5.1.7"),
        ("--from", "a\x01b@example.org", "501 5.1.7"),
        ("--from", "jörg@example.org", "553 5.6.7"),
        ("--to", "a@[1.2.3.4", "501 5.1.3"),
        ("--to", "a@-x", "501 5.1.3"),
        ("--to", "a@x_y", "501 5.1.3"),
        ("--to", "l" * 65 + "@example.net", "501 5.1.3"),
        ("--to", ".a@example.net", "501 5.1.3"),
    ],
)
async def test_swaks_bad_addresses_get_5xx_at_mail_or_rcpt(
    sluice: SluiceFactory, upstream: TestUpstream, option: str, address: str, reply: str
) -> None:
    swaks = require("swaks")
    other = {"--from": "app@example.org", "--to": "a@example.net"}
    other[option] = address
    async with sluice([provider_for(upstream)]) as s:
        code, out = await run_peer(
            swaks,
            "--server",
            f"127.0.0.1:{s.port}",
            "--from",
            other["--from"],
            "--to",
            other["--to"],
        )
        assert code != 0, out
        assert f"<** {reply}" in out, out
        assert "DATA" not in re.findall(r"^ -> (\w+)", out, re.MULTILINE)
        assert sum((await s.spool.counts_by_status()).values()) == 0


async def test_php_mail_with_an_unwrapped_html_line_returns_true(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """PHP's mail() through ``sluice sendmail``, which speaks SMTP to the listener."""
    php = require("php")
    html = "<p>" + "unwrapped " * 2000 + "</p>"
    script = tmp_path / "send.php"
    script.write_text(
        "<?php var_dump(mail('a@example.net', 'long', $argv[1], "
        "'Content-Type: text/html; charset=utf-8'));\n",
        encoding="utf-8",
    )
    async with sluice([provider_for(upstream)]) as s:
        sendmail = f"{sys.executable} -m relay.cli sendmail -t -i -C {s.config_path}"
        code, out = await run_peer(php, "-d", f"sendmail_path={sendmail}", str(script), html)
        assert code == 0 and "bool(true)" in out, out
        queued = await s.spool.list_queue()
        assert queued, "nothing spooled"
        raw = await s.spool.raw(queued[0].queue_id)
    assert html.encode() in raw


async def test_swaks_pipelining_gets_every_reply_in_order(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """swaks --pipeline sends MAIL, the RCPTs and DATA at once. Sluice holds the
    group's 250s and writes them with the next reply that is not held
    (RelaySMTP.push; test_aiosmtpd_seams.py counts those writes); a client
    nobody here wrote still pairs every reply with its command, the refusal
    in the middle in its place, and the message goes to the other two."""
    swaks = require("swaks")
    to = "a@example.net,a..b@example.net,c@example.net"
    async with sluice([provider_for(upstream)]) as s:
        code, out = await run_peer(
            swaks, "--server", f"127.0.0.1:{s.port}", "--pipeline",
            "--from", "app@example.org", "--to", to,
        )  # fmt: skip
        assert "PIPELINING" in out, out
        (got,) = await upstream.wait_for(1)
    # swaks wrote the whole group before reading a reply ...
    group = out[out.index(" -> MAIL FROM") :]
    commands = re.findall(r"^ -> (MAIL|RCPT|DATA)", group, re.MULTILINE)[:5]
    assert commands == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA"], out
    assert group.index(" -> DATA") < group.index("<-  250"), out
    # ... and paired the replies with its commands, the refusal in its place.
    replies = re.findall(r"^<[-*~]+ +(\d{3}) ", group, re.MULTILINE)
    assert replies[:5] == ["250", "250", "501", "250", "354"], out
    assert "queued as" in out, out
    assert got.recipients == ["a@example.net", "c@example.net"]
    assert code == 0, out
