"""Delivery to Postfix's ``smtp-sink``: a real upstream nobody here wrote."""

from __future__ import annotations

from tests.conftest import SluiceFactory, smtp_send
from tests.peers import smtp_sink


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
