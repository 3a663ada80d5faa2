"""Delivery to Postfix's ``smtp-sink``: a real upstream nobody here wrote."""

from __future__ import annotations

import asyncio

from relay.model import AttemptStatus
from tests.conftest import SluiceFactory, smtp_send
from tests.peers import require, smtp_sink


async def test_a_message_reaches_smtp_sink_byte_for_byte(sluice: SluiceFactory) -> None:
    body = (
        b"From: app@example.org\r\nTo: user@example.net\r\nSubject: real peer\r\n\r\n"
        b"line one\r\n.leading dot\r\n"
    )
    async with smtp_sink() as sink:
        provider = {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([provider]) as s:
            refused, reply = await smtp_send(s.port, "app@example.org", ["user@example.net"], body)
            assert refused == {}
            (got,) = await sink.wait_for(1)
    assert got.sender == "app@example.org"
    assert got.recipients == ["user@example.net"]
    # smtp-sink dumps with LF line endings; our Received header comes first.
    assert got.data.startswith(b"Received: from ")
    assert body.replace(b"\r\n", b"\n") in got.data
    assert reply.startswith("2.0.0 Ok: queued as ")


async def test_a_stream_from_smtp_source_reaches_smtp_sink_in_batches_each_message_once(
    sluice: SluiceFactory,
) -> None:
    """Postfix's ``smtp-source`` (one client, a new connection per message) into
    Sluice, Postfix's ``smtp-sink`` behind it: with ``delivery.batch_window``,
    a claim takes several messages (their attempts share its start time), and
    every message arrives exactly once."""
    program = require("smtp-source")
    count = 30
    async with smtp_sink() as sink:
        provider = {"id": "sink", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([provider], delivery={"batch_window": "0.2s"}) as s:
            source = await asyncio.create_subprocess_exec(
                program,
                *("-s", "1", "-m", str(count), "-l", "1000"),
                *("-f", "app@example.org", "-t", "user@example.net"),
                f"127.0.0.1:{s.port}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(source.communicate(), 60)
            assert source.returncode == 0, err.decode()
            await sink.wait_for(count)
            await s.wait_idle()
            log = await s.spool.list_log(limit=count + 10)
        arrived = len(sink.messages())
    assert arrived == count
    assert len(log) == count
    assert all(e.status is AttemptStatus.SUCCESS for e in log)
    claims = {e.started_at for e in log}
    assert len(claims) <= count // 3, f"{len(claims)} claims for {count} messages"
