"""Webhooks end to end: a real Sluice, a real HTTP receiver that is down, then
answers 500, then recovers; and events stored before a restart sent after it.
Also the events of operator holds and releases (the CLI in another process,
``hold.rules``, the store's API) and of bounces a provider's refusal counts."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.model import RecipientStatus, Selection
from relay.store.spool import Control
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
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


async def test_a_webhook_url_with_a_token_is_logged_masked(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # httpx's request line, as `log.level: debug` shows it (a daemon keeps it at WARNING).
    caplog.set_level(logging.DEBUG, logger="httpx")
    rx = await WebhookReceiver().start()
    rx.status = 500  # refused once: the warning names the URL too
    url = rx.url.replace("://", "://hookuser:SECRET-PW@") + "?token=SECRET&sig=SECRET-SIG"
    notify = {**_notify(rx), "webhooks": [{"url": url, "secret": SECRET}]}
    async with sluice([provider_for(upstream)], notify=notify) as s:
        await smtp_send(s.port, "app@sender.test", ["good@example.net"], _body("one"))
        await rx.wait_for(lambda hits: len(hits) >= 1)
        rx.status = 204
        await eventually(lambda: _settled(s.spool, url))
    await rx.stop()
    assert rx.accepted and rx.accepted[0].path == "/hook?token=SECRET&sig=SECRET-SIG"
    lines = [r.getMessage() for r in caplog.records]
    masked = rx.url.replace("://", "://***@") + "?token=***&sig=***"
    assert [line for line in lines if "SECRET" in line] == []
    assert any(line.startswith("HTTP Request: POST " + masked) for line in lines)  # delivered
    assert any(line.startswith(f"webhook {masked}: event ") for line in lines)  # refused
    assert "SECRET" not in caplog.text


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


# --------------------------------------------- held, released and bounced


def _types(rx: WebhookReceiver) -> list[str]:
    """Event types in the order first accepted (duplicates dropped by id)."""
    seen: set[str] = set()
    out: list[str] = []
    for h in rx.accepted:
        if h.event["id"] not in seen:
            seen.add(h.event["id"])
            out.append(h.event["type"])
    return out


def _one(rx: WebhookReceiver, kind: str) -> Hit:
    (hit,) = {h.event["id"]: h for h in rx.accepted if h.event["type"] == kind}.values()
    return hit


def _has(kind: str) -> Callable[[list[Hit]], bool]:
    return lambda hits: any(h.status == 200 and h.event["type"] == kind for h in hits)


async def test_hold_and_release_by_the_cli_post_held_and_released(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """`sluice queue hold/release` (another process) against a running relay."""
    everything = await WebhookReceiver().start()  # no `events`: every kind
    outcomes = await WebhookReceiver().start()
    upstream.reply["RCPT:later@example.net"] = "451 4.3.0 try again"
    notify = {
        "webhooks": [
            {"url": everything.url, "secret": SECRET},
            {"url": outcomes.url, "secret": SECRET, "events": ["deferred", "sent"]},
        ],
        "webhook_first_delay": "0.2s",
        "webhook_max_delay": "0.5s",
    }
    retry = {"first_delay": "1h", "max_delay": "1h", "jitter": 0}
    async with sluice([provider_for(upstream)], notify=notify, retry=retry) as s:
        _, reply = await smtp_send(s.port, "app@sender.test", ["later@example.net"], _body("h"))
        qid = reply.rsplit(" ", 1)[-1]
        await everything.wait_for(_has("deferred"))
        config = str(s.config_path)
        rc, _out, err = await run_cli("queue", "hold", qid, "--reason", "maintenance", "-c", config)
        assert rc == 0, err
        await everything.wait_for(_has("held"))
        del upstream.reply["RCPT:later@example.net"]
        rc, _out, err = await run_cli("queue", "release", qid, "-c", config)
        assert rc == 0, err
        await everything.wait_for(_has("sent"))
        await outcomes.wait_for(_has("sent"))
        await eventually(lambda: _settled(s.spool, everything.url))
        await eventually(lambda: _settled(s.spool, outcomes.url))
    await everything.stop()
    await outcomes.stop()
    assert _types(everything) == ["deferred", "held", "released", "sent"]
    assert _types(outcomes) == ["deferred", "sent"]  # its list has neither held nor released
    held, released = _one(everything, "held").event, _one(everything, "released").event
    actor = held["data"]["actor"]
    assert actor.startswith("cli:")
    assert held["data"] == {
        "queue_id": qid,
        "recipient": "later@example.net",
        "status": "held",
        "reason": f"held by {actor}: maintenance",
        "actor": actor,
    }
    assert released["data"] == {
        "queue_id": qid,
        "recipient": "later@example.net",
        "status": "queued",
        "reason": f"released by {actor}",
        "actor": actor,
    }
    for h in everything.requests + outcomes.requests:
        assert _verify(SECRET, h.headers["x-sluice-signature"], h.body)
        assert h.headers["x-sluice-event-id"] == h.event["id"]


async def test_a_hold_rule_and_a_release_through_the_store_post_one_event_per_recipient(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    rx = await WebhookReceiver().start()
    rules = [{"recipient_domain": ["staging.test"], "reason": "staging"}]
    async with sluice(
        [provider_for(upstream)],
        notify=_notify(rx, events=["held", "released"]),
        hold={"rules": rules},
    ) as s:
        _, reply = await smtp_send(
            s.port,
            "app@sender.test",
            ["a@staging.test", "b@staging.test", "c@example.net"],
            _body("rules"),
        )
        qid = reply.rsplit(" ", 1)[-1]
        await rx.wait_for(lambda hits: len({h.event["id"] for h in hits}) >= 2)
        n = await s.spool.control(
            Selection(queue_ids=(qid,)),
            Control("release", "api"),
            endpoints=s.daemon.config.notify.webhooks,
        )
        assert n == 2
        await rx.wait_for(lambda hits: len({h.event["id"] for h in hits}) >= 4)
        await upstream.wait_for(2)  # c at once; a and b once released
        await eventually(lambda: _settled(s.spool, rx.url))
    await rx.stop()
    assert _types(rx) == ["held", "held", "released", "released"]  # no "sent": not listed
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for h in {h.event["id"]: h for h in rx.accepted}.values():
        by_kind.setdefault(h.event["type"], []).append(h.event["data"])
    assert sorted((d["recipient"], d["actor"], d["reason"]) for d in by_kind["held"]) == [
        ("a@staging.test", "hold.rules", "held by hold.rules: staging"),
        ("b@staging.test", "hold.rules", "held by hold.rules: staging"),
    ]
    assert sorted((d["recipient"], d["actor"], d["status"]) for d in by_kind["released"]) == [
        ("a@staging.test", "api", "queued"),
        ("b@staging.test", "api", "queued"),
    ]
    assert {d["queue_id"] for ds in by_kind.values() for d in ds} == {qid}


async def test_a_refusal_of_the_address_posts_bounced_then_suppressed(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """A 550 5.1.1 at RCPT counts as a bounce (``bounces.count_smtp_refusals``)."""
    rx = await WebhookReceiver().start()
    upstream.reply["RCPT:gone@example.net"] = "550 5.1.1 <gone@example.net>: user unknown"
    async with sluice(
        [provider_for(upstream)],
        notify=_notify(rx, events=["bounced", "suppressed"]),
        bounces={"threshold": 2},
    ) as s:
        first = (await smtp_send(s.port, "app@sender.test", ["gone@example.net"], _body("1")))[1]
        await rx.wait_for(_has("bounced"))
        second = (await smtp_send(s.port, "app@sender.test", ["gone@example.net"], _body("2")))[1]
        await rx.wait_for(_has("suppressed"))
        await eventually(lambda: _settled(s.spool, rx.url))
    await rx.stop()
    assert _types(rx) == ["bounced", "bounced", "suppressed"]  # not "failed": not listed
    events = list({h.event["id"]: h.event for h in rx.accepted}.values())
    qids = [first.rsplit(" ", 1)[-1], second.rsplit(" ", 1)[-1]]
    for event, qid in zip(events[:2], qids, strict=True):
        assert event["data"] == {
            "queue_id": qid,
            "recipient": "gone@example.net",
            "kind": "hard",
            "status": "5.1.1",
            "diagnostic": "up1: 550 5.1.1 <gone@example.net>: user unknown",
            "source": "smtp",
        }
    suppressed = events[2]["data"]
    assert suppressed["source"] == "bounce" and suppressed["recipient"] == "gone@example.net"
    assert suppressed["queue_id"] == qids[1] and "5.1.1" in suppressed["reason"]
    assert all(_verify(SECRET, h.headers["x-sluice-signature"], h.body) for h in rx.requests)
