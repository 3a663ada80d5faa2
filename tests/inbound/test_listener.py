"""The SMTP listener against bad input: the right reply code, nothing stored wrongly."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import aiosmtplib
import pytest

from relay.model import RecipientStatus
from tests.conftest import Running, SluiceFactory, eventually, provider_for, raw_session, smtp_send
from tests.upstream import TestUpstream

HELLO = b"Subject: hi\r\n\r\nhello\r\n"


async def stored(s: Running) -> int:
    return sum((await s.spool.counts_by_status()).values())


async def still_works(s: Running, upstream: TestUpstream, expected_total: int) -> None:
    refused, reply = await smtp_send(s.port, "app@example.org", ["ok@example.net"], HELLO)
    assert refused == {} and "queued as" in reply
    await upstream.wait_for(expected_total)


async def test_ehlo_advertises_extensions(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)], smtp={"max_message_size": "10KiB"}) as s:
        replies = await raw_session(s.port, [b"EHLO app.local\r\n", b"QUIT\r\n"])
    ehlo = replies[1]
    for ext in ("SIZE 10240", "8BITMIME", "SMTPUTF8", "PIPELINING"):
        assert f"250-{ext}" in ehlo or f"250 {ext}" in ehlo
    assert replies[0].startswith("220 sluice.test")


async def test_oversize_message_is_refused(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)], smtp={"max_message_size": "10KiB"}) as s:
        big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 200 + b".\r\n"
        replies = await raw_session(
            s.port,
            [
                b"EHLO x\r\n",
                b"MAIL FROM:<app@example.org>\r\n",
                b"RCPT TO:<a@example.net>\r\n",
                b"DATA\r\n",
                big,
            ],
        )
        assert replies[-1].startswith("552"), replies
        # Declared in advance with SIZE=: refused at MAIL.
        replies = await raw_session(
            s.port, [b"EHLO x\r\n", b"MAIL FROM:<app@example.org> SIZE=999999\r\n"]
        )
        assert replies[2].startswith("552")
        assert await stored(s) == 0
        await still_works(s, upstream, 1)


async def test_too_many_recipients(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)], smtp={"max_recipients": 3}) as s:
        rcpts = [f"r{i}@example.net" for i in range(5)]
        refused, _ = await smtp_send(s.port, "app@example.org", rcpts, HELLO)
        assert set(refused) == {"r3@example.net", "r4@example.net"}
        assert all(code == 452 for code, _text in refused.values())
        (got,) = await upstream.wait_for(1)
    # The ones accepted before the limit are kept, not silently dropped (RFC 5321 § 4.5.3.1.10).
    assert got.recipients == rcpts[:3]


async def test_client_outside_allowed_networks(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)], smtp={"allowed_networks": ["127.0.0.1/32"]}) as s:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", s.port, local_addr=("127.0.0.2", 0)
        )
        greeting = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)  # the server hangs up
        writer.close()
        assert greeting.startswith(b"554 5.7.1")
        assert b"127.0.0.2" in greeting
        assert rest == b""
        assert await stored(s) == 0
        await still_works(s, upstream, 1)  # 127.0.0.1 is still welcome


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        ([b"EHLO x\r\n", b"MAIL FROM:<broken\r\n"], "501"),
        ([b"EHLO x\r\n", b"RCPT TO:<a@example.net>\r\n"], "503"),
        ([b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"DATA\r\n"], "503"),
        ([b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<nodomain>\r\n"], "501"),
        ([b"EHLO x\r\n", b"FROB\r\n"], "500"),
        ([b"EHLO x\r\n", b"MAIL FROM:<a@example.org> BODY=9BIT\r\n"], "501"),
        (
            [b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"MAIL FROM:<b@example.org>\r\n"],
            "503",
        ),
        ([b"EHLO " + b"x" * 600 + b"\r\n"], "500"),
        ([b"\x00\xff\xfe garbage\r\n"], "500"),
    ],
)
async def test_malformed_commands(
    sluice: SluiceFactory, upstream: TestUpstream, commands: list[bytes], code: str
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        replies = await raw_session(s.port, commands)
        assert replies[-1].startswith(code), replies
        assert await stored(s) == 0
        await still_works(s, upstream, 1)


async def test_null_sender_is_accepted(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)]) as s:
        await smtp_send(s.port, "", ["a@example.net"], HELLO)
        (got,) = await upstream.wait_for(1)
    assert got.sender == ""


SMUGGLE = (
    b"Subject: innocent\r\n\r\nhello\n.\nMAIL FROM:<ceo@example.org>\r\n"
    b"RCPT TO:<victim@example.net>\r\nDATA\r\nSubject: spoofed\r\n\r\nsend money\r\n.\r\n"
)


async def smuggle(port: int) -> list[str]:
    return await raw_session(
        port,
        [
            b"EHLO x\r\n",
            b"MAIL FROM:<app@example.org>\r\n",
            b"RCPT TO:<a@example.net>\r\n",
            b"DATA\r\n",
            SMUGGLE,
            b"QUIT\r\n",
        ],
    )


async def test_bare_lf_smuggling_is_rejected(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)]) as s:
        replies = await smuggle(s.port)
        assert replies[4].startswith("354")
        assert replies[5].startswith("550 5.6.0"), replies
        assert "bare LF" in replies[5]
        assert replies[6].startswith("221")
        assert await stored(s) == 0
        await still_works(s, upstream, 1)
    assert all(m.sender != "ceo@example.org" for m in upstream.messages)


async def test_bare_lf_accepted_when_configured_is_never_a_second_message(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)], smtp={"bare_line_endings": "accept"}) as s:
        replies = await smuggle(s.port)
        assert replies[5].startswith("250"), replies
        (got,) = await upstream.wait_for(1)
        await s.wait_idle()
    # One message from the real sender; the "smuggled" one is just body text,
    # and on the way out aiosmtplib wrote CRLF and dot-stuffed the lone dot.
    assert len(upstream.messages) == 1
    assert got.sender == "app@example.org"
    assert got.recipients == ["a@example.net"]
    assert b"hello\r\n..\r\nMAIL FROM:<ceo@example.org>\r\n" not in got.data  # stuffed
    assert b"hello\r\n.\r\nMAIL FROM:<ceo@example.org>" in got.data


async def test_the_listener_records_which_messages_end_every_line_in_crlf(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """Delivery skips its own search for bare line endings only where none can be."""
    async with sluice([provider_for(upstream)], smtp={"bare_line_endings": "accept"}) as s:
        await smuggle(s.port)
        await smtp_send(s.port, "app@example.org", ["b@example.net"], b"Subject: ok\r\n\r\nok\r\n")
        await upstream.wait_for(2)
        flags = await s.spool._writer.submit(
            lambda c: [
                tuple(r)
                for r in c.execute(
                    "SELECT m.sender, b.crlf_only FROM bodies b JOIN messages m"
                    " ON m.id = b.message_id ORDER BY m.id"
                )
            ]
        )
    assert flags == [("app@example.org", 0), ("app@example.org", 1)]


async def test_spool_failure_answers_451_and_stores_nothing(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        await still_works(s, upstream, 1)
        before = await stored(s)
        # Simulate a full disk the way SQLite's own tests do (max_page_count),
        # on the spool's writer connection.
        pages = await s.spool._writer.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await s.spool._writer.submit(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
        big = b"Subject: fat\r\n\r\n" + (b"y" * 76 + b"\r\n") * 2000
        with pytest.raises(aiosmtplib.SMTPDataError) as err:
            await smtp_send(s.port, "app@example.org", ["a@example.net"], big)
        assert err.value.code == 451
        assert "spool" in err.value.message
        assert await stored(s) == before
        await s.spool._writer.submit(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
        await still_works(s, upstream, 2)
    # The refused message was never delivered (RFC 5321 § 4.1.1.4).
    assert all(b"Subject: fat" not in m.data for m in upstream.messages)


async def test_client_dropping_during_data_stores_nothing(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        for line in (
            b"EHLO x\r\n",
            b"MAIL FROM:<a@example.org>\r\n",
            b"RCPT TO:<b@example.net>\r\n",
            b"DATA\r\n",
        ):
            writer.write(line)
        writer.write(b"Subject: half\r\n\r\nhalf a mess")
        await writer.drain()
        replies = b""
        while b"354" not in replies:
            replies += await asyncio.wait_for(reader.read(1024), 5)
        writer.transport.abort()
        await still_works(s, upstream, 1)
        await s.wait_idle()
        counts = await s.spool.counts_by_status()
    assert sum(counts.values()) == 1
    assert counts[RecipientStatus.SENT] == 1


@pytest.mark.parametrize("workers", [0, 1], ids=["in-daemon", "accept-worker"])
async def test_ehlo_name_with_invalid_utf8_is_accepted_and_kept_escaped(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    """Issue #23, point 5: undecodable bytes in EHLO cost the session every message (451).

    Also through an accept worker (the default), whose session reaches the
    daemon's spool pickled.
    """
    async with sluice([provider_for(upstream)], smtp={"workers": workers}) as s:
        replies = await raw_session(
            s.port,
            [
                b"EHLO h\xff\xfe\\x\r\n",
                b"MAIL FROM:<app@example.org>\r\n",
                b"RCPT TO:<a@example.net>\r\n",
                b"DATA\r\n",
                b"Subject: bytes\r\n\r\nhi\r\n.\r\n",
                b"HELO \x01\x80ok\r\n",
                b"MAIL FROM:<app@example.org>\r\n",
                b"RCPT TO:<b@example.net>\r\n",
                b"DATA\r\n",
                b"Subject: bytes\r\n\r\nhi\r\n.\r\n",
                b"QUIT\r\n",
            ],
        )
        codes = [r[:3] for r in replies]
        assert codes == ["220", *["250", "250", "250", "354", "250"] * 2, "221"], replies
        await upstream.wait_for(2)
        rows = await s.spool._writer.submit(
            lambda c: [
                (r[0], bytes(r[1]))
                for r in c.execute(
                    "SELECT m.helo, b.data FROM bodies b JOIN messages m"
                    " ON m.id = b.message_id ORDER BY m.id"
                )
            ]
        )
    # Every byte sent is recorded, escaped: undecodable bytes and controls as
    # \xHH, the backslash doubled, so nothing is lost or ambiguous.
    assert [helo for helo, _ in rows] == ["h\\xff\\xfe\\\\x", "\\x01\\x80ok"]
    first, second = (data for _, data in rows)
    assert first.startswith(b"Received: from h\\xff\\xfe\\\\x ([127.0.0.1])\r\n"), first
    assert second.startswith(b"Received: from \\x01\\x80ok ([127.0.0.1])\r\n"), second
    assert all(data.split(b"\r\n\r\n")[0].isascii() for data in (first, second))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_message_being_stored_at_shutdown_gets_its_250_before_the_421(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """Ending every session at once (an accept worker whose daemon is gone) waits for a commit.

    Another connection holds the spool's write lock, so the message sits in
    its commit when the listener closes with no grace. The client must hear
    the 250 of the committed message before the 421, or it sends it again.
    """
    async with sluice([provider_for(upstream)]) as s:
        listener = s.daemon.listener
        assert listener is not None
        blocker = sqlite3.connect(tmp_path / "spool.sqlite3", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(
                b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            )
            replies = b""
            while b"354" not in replies:
                replies += await asyncio.wait_for(reader.read(1024), 5)
            writer.write(b"Subject: stored at shutdown\r\n\r\nbody\r\n.\r\n")
            await eventually(
                lambda: any(not x.between_messages.is_set() for x in listener.sessions.open)
            )
            closing = asyncio.create_task(listener.aclose(grace=0))
            for _ in range(50):  # loop turns enough for a 421 to go out, if one were sent now
                await asyncio.sleep(0)
            blocker.execute("ROLLBACK")
            rest = b""
            async with asyncio.timeout(10):
                while chunk := await reader.read(1024):
                    rest += chunk
            await closing
            writer.close()
        finally:
            blocker.close()
        lines = rest.decode().splitlines()
        assert lines[0].startswith("250 2.0.0 Ok: queued as"), lines
        assert lines[1].startswith("421 4.3.2"), lines
        assert await stored(s) == 1
