"""Webhooks end to end: a real Sluice, a real HTTP receiver that is down, then
answers 500, then recovers; and events stored before a restart sent after it."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import Any

from relay.model import RecipientStatus
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream
from tests.webhook_receiver import Hit, WebhookReceiver

SECRET = "whsec-test-0123456789"


def _verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """The receiver's check, as README shows it (written here apart from relay.events)."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    timestamp = fields["t"]
    expected = hmac.new(
        secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance
    return fresh and hmac.compare_digest(expected, fields["v1"])


def _notify(rx: WebhookReceiver, **hook: Any) -> dict[str, Any]:
    return {
        "webhooks": [{"url": rx.url, "secret": SECRET, **hook}],
        "webhook_first_delay": "0.2s",
        "webhook_max_delay": "0.5s",
    }


def _body(subject: str) -> bytes:
    return f"From: app@sender.test\r\nSubject: {subject}\r\n\r\nhi\r\n".encode()


def _by_message(hits: list[Hit]) -> dict[str, list[str]]:
    """Event types per queue ID, in the order they were first accepted."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    for h in hits:
        event = h.event
        if event["id"] in seen:
            continue  # at least once: a duplicate is allowed, and told by its id
        seen.add(event["id"])
        out.setdefault(event["data"]["queue_id"], []).append(event["type"])
    return out


async def test_receiver_down_then_500_then_up_gets_every_event_in_order(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    rx = await WebhookReceiver().start()
    await rx.stop()  # down: connection refused, on a port we will come back to
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    upstream.reply["RCPT:later@example.net"] = "451 4.3.0 try again"
    async with sluice(
        [provider_for(upstream)],
        notify=_notify(rx, events=["sent", "deferred", "failed"]),
        retry={"first_delay": "0.5s", "max_delay": "0.5s", "jitter": 0},
    ) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net"], _body("one"))
        await smtp_send(s.port, "app@sender.test", ["bad@example.net"], _body("two"))
        await smtp_send(s.port, "app@sender.test", ["later@example.net"], _body("three"))

        async def tried_while_down() -> bool:
            rows = await s.spool.outbox_recent(rx.url)
            return any(r.attempts >= 2 and r.last_status is None for r in rows)

        await eventually(tried_while_down)
        del upstream.reply["RCPT:later@example.net"]  # "three" goes through next time
        rx.status = 500
        await rx.start()
        await rx.wait_for(lambda hits: len(hits) >= 2)  # refused twice: no event is lost
        assert all(h.status == 500 for h in rx.requests)
        rx.status = 204
        await eventually(lambda: _all_delivered(s.spool, rx.url), within=30)
        rows = await s.spool.outbox_recent(rx.url)
        counts = await s.spool.outbox_counts()

    stored = {r.event_id: r for r in rows}
    got = {h.event["id"] for h in rx.accepted}
    assert got == set(stored)  # every stored event arrived (at least once)
    by_message = _by_message(rx.accepted)
    assert sorted(by_message.values()) == [["deferred", "sent"], ["failed"], ["sent"]]
    # In order per message: as stored (the outbox's id order) and as they happened.
    for qid, types in by_message.items():
        assert types == [r.event for r in sorted(rows, key=lambda r: r.id) if r.queue_id == qid]
    for h in rx.requests:
        assert _verify(SECRET, h.headers["x-sluice-signature"], h.body)
        assert h.headers["content-type"] == "application/json"
        assert h.headers["x-sluice-event-id"] == h.event["id"]
    assert counts[rx.url] == {"pending": 0, "delivered": len(rows), "failing": 0}
    failed = next(h.event for h in rx.accepted if h.event["type"] == "failed")
    assert failed["data"]["recipient"] == "bad@example.net"
    assert failed["data"]["code"] == 550
    assert failed["data"]["status"] == RecipientStatus.FAILED.value


async def _all_delivered(spool: Any, url: str) -> bool:
    rows = await spool.outbox_recent(url)
    return len(rows) == 4 and all(r.delivered_at is not None for r in rows)


async def test_endpoint_filter_and_a_wrong_secret_does_not_verify(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    rx = await WebhookReceiver().start()
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    async with sluice([provider_for(upstream)], notify=_notify(rx, events=["failed"])) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net"], _body("one"))
        await smtp_send(s.port, "app@sender.test", ["bad@example.net"], _body("two"))
        await s.wait_idle()
        await rx.wait_for(lambda hits: len(hits) >= 1)
        await eventually(lambda: _settled(s.spool, rx.url))
    await rx.stop()
    (hit,) = rx.requests  # "sent" is filtered out for this endpoint
    assert hit.event["type"] == "failed"
    assert _verify(SECRET, hit.headers["x-sluice-signature"], hit.body)
    assert not _verify("another-secret", hit.headers["x-sluice-signature"], hit.body)
    assert not _verify(SECRET, hit.headers["x-sluice-signature"], hit.body + b" ")


async def _settled(spool: Any, url: str) -> bool:
    return bool((await spool.outbox_counts()).get(url, {}).get("pending") == 0)


async def test_events_stored_before_a_restart_are_sent_after_it(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    rx = await WebhookReceiver().start()
    await rx.stop()
    sections: dict[str, Any] = {"notify": _notify(rx)}
    async with sluice([provider_for(upstream)], **sections) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net"], _body("one"))
        await smtp_send(s.port, "app@sender.test", ["other@example.net"], _body("two"))
        await s.wait_idle()
        await eventually(lambda: _pending(s.spool, rx.url, 2))
    assert rx.requests == []
    await rx.start()
    async with sluice([provider_for(upstream)], **sections) as s:  # same spool
        await rx.wait_for(lambda hits: len({h.event["id"] for h in hits}) >= 2)
        await eventually(lambda: _settled(s.spool, rx.url))
    await rx.stop()
    assert sorted(h.event["data"]["recipient"] for h in rx.accepted) == [
        "good@example.net",
        "other@example.net",
    ]
    assert all(_verify(SECRET, h.headers["x-sluice-signature"], h.body) for h in rx.requests)


async def _pending(spool: Any, url: str, n: int) -> bool:
    return bool((await spool.outbox_counts()).get(url, {}).get("pending") == n)
