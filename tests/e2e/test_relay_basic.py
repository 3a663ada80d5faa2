from __future__ import annotations

from tests.conftest import SluiceFactory, provider_for, smtp_send
from tests.upstream import TestUpstream


async def test_message_is_relayed_byte_for_byte(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    body = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n\r\nline one\r\n.dot\r\n"
    async with sluice([provider_for(upstream)]) as s:
        refused, reply = await smtp_send(s.port, "a@example.org", ["b@example.net"], body)
        assert refused == {}
        assert reply.startswith("2.0.0 Ok: queued as ")
        (got,) = await upstream.wait_for(1)
    assert got.sender == "a@example.org"
    assert got.recipients == ["b@example.net"]
    header, _sep, rest = got.data.partition(b"\r\nFrom: ")
    assert header.startswith(b"Received: from ")
    assert b"by sluice.test (Sluice) with ESMTP id " in header
    assert b"From: " + rest == body
