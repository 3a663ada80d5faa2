"""Routing by sender domain, recipient domain and header; the send_from rewrite."""

from __future__ import annotations

from pathlib import Path

from relay.model import AttemptStatus
from tests.conftest import (
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    smtp_send,
    write_config,
)
from tests.outbound.helpers import SENDER, message, queue_id_of, sent, strip_received
from tests.upstream import TestUpstream


def two(upstream: TestUpstream, upstream2: TestUpstream) -> list[dict[str, object]]:
    return [
        provider_for(upstream, "main", priority=1),
        provider_for(upstream2, "other", priority=2),
    ]


async def test_route_by_sender_domain(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    routes = [{"sender_domain": ["billing.example.org"], "providers": ["other"]}]
    async with sluice(two(upstream, upstream2), routes=routes) as s:
        billing = "invoices@billing.example.org"
        await smtp_send(s.port, billing, ["a@example.net"], message(sender=billing))
        await smtp_send(s.port, SENDER, ["b@example.net"], message())
        (via_other,) = await upstream2.wait_for(1)
        (via_main,) = await upstream.wait_for(1)
        await s.wait_idle()
    assert via_other.sender == billing and via_other.recipients == ["a@example.net"]
    assert via_main.sender == SENDER and via_main.recipients == ["b@example.net"]


async def test_route_by_recipient_domain_splits_one_message(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    routes = [{"recipient_domain": ["*.partner.test"], "providers": ["other"]}]
    async with sluice(two(upstream, upstream2), routes=routes) as s:
        rcpts = ["x@example.net", "y@mx.partner.test", "z@example.net"]
        _, reply = await smtp_send(s.port, SENDER, rcpts, message())
        (via_other,) = await upstream2.wait_for(1)
        (via_main,) = await upstream.wait_for(1)
        qid = queue_id_of(reply)
        done = await eventually(lambda: sent(s.spool, qid))
    assert via_other.recipients == ["y@mx.partner.test"]
    assert via_main.recipients == ["x@example.net", "z@example.net"]
    assert {e.email: e.provider for e in done} == {
        "x@example.net": "main",
        "y@mx.partner.test": "other",
        "z@example.net": "main",
    }


async def test_header_names_the_provider_and_is_removed(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    async with sluice(two(upstream, upstream2)) as s:
        data = message("pick", headers="X-Sluice-Provider: other\r\n")
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], data)
        (got,) = await upstream2.wait_for(1)
        qid = queue_id_of(reply)
        await eventually(lambda: sent(s.spool, qid))
        stored = await s.spool.raw(qid)
    assert b"X-Sluice-Provider" not in got.data
    assert strip_received(got.data) == data.replace(b"X-Sluice-Provider: other\r\n", b"")
    assert b"X-Sluice-Provider: other\r\n" in stored  # the spool keeps the original
    assert upstream.messages == []


async def test_route_by_header_value(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    routes = [{"header": "X-Mail-Class: bulk", "providers": ["other"]}]
    async with sluice(two(upstream, upstream2), routes=routes) as s:
        await smtp_send(
            s.port, SENDER, ["a@example.net"], message(headers="X-Mail-Class: Bulk\r\n")
        )
        (got,) = await upstream2.wait_for(1)
    assert b"X-Mail-Class: Bulk" in got.data  # only our own header is removed


async def test_route_is_resolved_at_every_attempt(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream, tmp_path: Path
) -> None:
    """Mail queued under one route follows the new route after a reload."""
    await upstream.stop()
    providers = two(upstream, upstream2)
    routes = [{"recipient_domain": ["example.net"], "providers": ["main"]}]
    async with sluice(providers, routes=routes) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        await eventually(lambda: _deferred(s, qid))
        new_routes = [{"recipient_domain": ["example.net"], "providers": ["other"]}]
        write_config(s.config_path, fast_config(tmp_path, providers, routes=new_routes))
        assert await s.daemon.reload() is True
        await s.spool.retry_now(qid)
        await upstream2.wait_for(1)
        (entry,) = await eventually(lambda: sent(s.spool, qid))
        log = sorted(await s.spool.list_log(search=qid), key=lambda e: e.id)
    assert entry.provider == "other"
    assert log[0].provider == "main" and log[0].status is AttemptStatus.DEFERRED
    assert log[-1].provider == "other" and log[-1].status is AttemptStatus.SUCCESS


async def _deferred(s: object, qid: str) -> bool:
    log = await s.spool.list_log(search=qid)  # type: ignore[attr-defined]
    return any(e.status is AttemptStatus.DEFERRED for e in log)


async def test_send_from_rewrites_envelope_and_from_keeps_reply_to(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    p = provider_for(upstream, send_from="relay@verified.test", send_from_name="Example Äpp")
    async with sluice([p]) as s:
        data = message("rewrite me")
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], data)
        with_reply_to = message("has reply-to", headers="Reply-To: <desk@example.org>\r\n")
        await smtp_send(s.port, SENDER, ["b@example.net"], with_reply_to)
        first, second = await upstream.wait_for(2)
        stored = await s.spool.raw(queue_id_of(reply))
    assert first.sender == "relay@verified.test"
    head = strip_received(first.data).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert b"From: =?utf-8?q?Example_=C3=84pp?= <relay@verified.test>" in head
    assert b"Reply-To: App <app@example.org>" in head
    assert b"From: App <app@example.org>" not in head
    assert stored.endswith(data)  # the spool keeps the original bytes
    head2 = strip_received(second.data).split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [h for h in head2 if h.lower().startswith(b"reply-to")] == [
        b"Reply-To: <desk@example.org>"
    ]
    assert strip_received(first.data).endswith(b"\r\n\r\nhello\r\n")
