"""Hold, release, reroute, pause and resume in the admin pages and the JSON API, audited.

Over a real running Sluice and real upstreams; only the HTTP hop is in-process.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from relay.events import verify
from relay.model import RecipientStatus
from tests.admin.conftest import AppClientFactory
from tests.admin.test_pages import csrf_of, message
from tests.conftest import Running, SluiceFactory, eventually, provider_for, smtp_send
from tests.peers import free_port
from tests.upstream import TestUpstream
from tests.webhook_receiver import WebhookReceiver


async def login(c: httpx.AsyncClient, user: str, password: str) -> None:
    token = csrf_of((await c.get("/login")).text)
    r = await c.post("/login", data={"username": user, "password": password, "csrf_token": token})
    assert r.status_code == 303


async def deferred(s: Running, n: int) -> bool:
    entries = await s.spool.list_queue()
    return len(entries) == n and all(e.status is RecipientStatus.DEFERRED for e in entries)


async def test_hold_and_release_by_form_with_confirmation_and_csrf(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    async with sluice(
        [provider_for(upstream)], retry={"first_delay": "1h", "max_delay": "2h"}
    ) as s:
        for i in range(3):
            await smtp_send(s.port, "a@example.org", [f"r{i}@example.net"], message(f"m{i}"))
        await eventually(lambda: deferred(s, 3))
        q = sorted(e.queue_id for e in await s.spool.list_queue())
        async with app_client(s, password_file=tmp_path / "pw") as c:
            await login(c, "admin", "pw")
            token = csrf_of((await c.get("/queue")).text)
            form = {"action": "hold", "queue_id": q[:2], "back": "/queue"}
            # Without the CSRF token: refused, nothing held.
            assert (await c.post("/queue/control", data=form)).status_code == 403
            # First the confirmation, with the count; nothing changes yet.
            page = await c.post("/queue/control", data={**form, "csrf_token": token})
            assert page.status_code == 200
            assert "Hold 2 recipients</strong> of 2 messages?" in page.text
            assert {e.status for e in await s.spool.list_queue()} == {RecipientStatus.DEFERRED}
            r = await c.post(
                "/queue/control", data={**form, "csrf_token": token, "confirmed": "yes"}
            )
            assert r.status_code == 303 and r.headers["location"] == "/queue?done=hold&n=2"
            assert "2 recipients held." in (await c.get(r.headers["location"])).text
            held = {e.queue_id for e in await s.spool.list_queue(statuses=[RecipientStatus.HELD])}
            assert held == set(q[:2])
            # Release by a filter: everything held to example.net.
            r = await c.post(
                "/queue/control",
                data={
                    "action": "release",
                    "recipient_domain": "example.net",
                    "status": "held",
                    "csrf_token": token,
                    "confirmed": "yes",
                },
            )
            assert r.status_code == 303 and "n=2" in r.headers["location"]
            upstream.reply.clear()
            await upstream.wait_for(2)  # released: due now
            audit = (await c.get("/audit")).text
            assert "queue_id=" in audit and "recipient_domain=example.net" in audit
            entries = await s.spool.audit_log()
            assert [(e.actor, e.action, e.count) for e in entries] == [
                ("admin", "release", 2),
                ("admin", "hold", 2),
            ]
            # A reroute must name an enabled provider.
            bad = {"action": "reroute", "queue_id": q[2], "via": "nope", "csrf_token": token}
            assert (await c.post("/queue/control", data=bad)).status_code == 400


async def test_pause_shows_on_overview_healthz_metrics_and_resume(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream, "main")]) as s:
        async with app_client(s) as c:
            token = csrf_of((await c.get("/providers")).text)
            r = await c.post(
                "/providers/main/pause",
                data={"csrf_token": token, "reason": "provider incident", "for": "2h"},
            )
            assert r.status_code == 303 and r.headers["location"] == "/providers/main?done=pause"
            overview = (await c.get("/")).text
            assert 'id="pauses"' in overview and "provider incident" in overview
            assert "provider incident" in (await c.get("/providers")).text
            health = (await c.get("/healthz")).json()
            assert health["status"] == "degraded" and health["ok"] is False
            assert "main: provider incident (until" in health["problems"][0]
            metrics = (await c.get("/metrics")).text
            assert 'sluice_provider_paused{provider="main"} 1.0' in metrics
            # Mail is still accepted while paused, and waits.
            _, reply = await smtp_send(s.port, "a@example.org", ["b@example.net"], message("p"))
            assert reply.startswith("OK") or "queued" in reply
            waiting = await eventually(lambda: _waiting(s))
            assert "main: paused by operator: provider incident until" in waiting
            r = await c.post("/providers/main/resume", data={"csrf_token": token})
            assert r.status_code == 303
            await upstream.wait_for(1)
            assert (await c.get("/healthz")).json()["status"] == "ok"
            metrics = (await c.get("/metrics")).text
            assert 'sluice_provider_paused{provider="main"} 0.0' in metrics
            assert [e.action for e in await s.spool.audit_log()] == ["resume", "pause"]


async def _waiting(s: Running) -> str | None:
    entries = await s.spool.list_queue()
    return entries[0].reason if entries and "paused by operator" in entries[0].reason else None


async def test_api_with_bearer_token(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
    app_client: AppClientFactory,
    tmp_path: Path,
) -> None:
    (tmp_path / "pw").write_text("pw\n")
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    providers = [provider_for(upstream, "main"), provider_for(upstream2, "other", priority=200)]
    routes = [{"recipient_domain": ["example.net"], "providers": ["main"]}]
    async with sluice(
        providers, routes=routes, retry={"first_delay": "1h", "max_delay": "2h"}
    ) as s:
        await smtp_send(s.port, "a@example.org", ["r@example.net"], message("stuck"))
        await eventually(lambda: deferred(s, 1))
        (qid,) = [e.queue_id for e in await s.spool.list_queue()]
        async with app_client(s, password_file=tmp_path / "pw", token="tok") as c:
            auth = {"authorization": "Bearer tok"}
            assert (await c.post("/api/queue/hold", json={"queue_ids": [qid]})).status_code == 401
            r = await c.post(
                "/api/queue/hold",
                json={"filter": {"everything": True}, "dry_run": True},
                headers=auth,
            )
            assert r.json() == {"action": "hold", "dry_run": True, "recipients": 1, "messages": 1}
            r = await c.post("/api/queue/hold", json={}, headers=auth)
            assert r.status_code == 400
            r = await c.post(
                "/api/queue/reroute", json={"queue_ids": [qid], "via": "nope"}, headers=auth
            )
            assert r.status_code == 400
            r = await c.post(
                "/api/queue/reroute", json={"queue_ids": [qid], "via": "other"}, headers=auth
            )
            assert r.json()["recipients"] == 1
            (got,) = await upstream2.wait_for(1)
            assert got.recipients == ["r@example.net"] and upstream.messages == []
            r = await c.post("/api/pause", json={"reason": "all stop", "for": "1h"}, headers=auth)
            assert r.status_code == 200 and r.json()["provider"] == "*"
            pauses = (await c.get("/api/pauses", headers=auth)).json()
            assert [(p["provider"], p["reason"], p["actor"]) for p in pauses] == [
                ("*", "all stop", "api")
            ]
            views = (await c.get("/api/providers", headers=auth)).json()
            assert all(v["paused"]["reason"] == "all stop" for v in views)
            r = await c.post("/api/providers/main/pause", json={"for": "soon"}, headers=auth)
            assert r.status_code == 400
            assert (await c.post("/api/resume", headers=auth)).json()["paused"] is False
            assert (await c.post("/api/resume", headers=auth)).status_code == 409
            audit = (await c.get("/api/audit", headers=auth)).json()["entries"]
            assert [(a["actor"], a["action"], a["count"]) for a in audit] == [
                ("api", "resume", 0),
                ("api", "pause", 0),
                ("api", "reroute", 1),
            ]


async def test_api_hold_and_release_post_webhook_events(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    """The admin passes ``notify.webhooks`` down: each change is posted, signed."""
    (tmp_path / "pw").write_text("pw\n")
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    rx = await WebhookReceiver().start()
    notify = {
        "webhooks": [{"url": rx.url, "secret": "whsec-admin", "events": ["held", "released"]}],
        "webhook_first_delay": "0.2s",
    }
    async with sluice(
        [provider_for(upstream)], notify=notify, retry={"first_delay": "1h", "max_delay": "2h"}
    ) as s:
        await smtp_send(s.port, "a@example.org", ["r@example.net"], message("stuck"))
        await eventually(lambda: deferred(s, 1))
        (qid,) = [e.queue_id for e in await s.spool.list_queue()]
        async with app_client(s, password_file=tmp_path / "pw", token="tok") as c:
            auth = {"authorization": "Bearer tok"}
            for action in ("hold", "release"):
                body = {"queue_ids": [qid], "reason": "audit"}
                r = await c.post(f"/api/queue/{action}", json=body, headers=auth)
                assert r.json()["recipients"] == 1
        await rx.wait_for(lambda hits: {h.event["type"] for h in hits} == {"held", "released"})
    await rx.stop()
    events = {h.event["id"]: h.event for h in rx.accepted}
    assert sorted(
        (e["type"], e["data"]["actor"], e["data"]["reason"]) for e in events.values()
    ) == [
        ("held", "api", "held by api: audit"),
        ("released", "api", "released by api"),
    ]
    assert {e["data"]["queue_id"] for e in events.values()} == {qid}
    for h in rx.requests:
        assert verify(b"whsec-admin", h.headers["x-sluice-signature"], h.body, now=time.time())


async def test_the_webhooks_page_shows_a_url_without_its_token(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    port = free_port()  # nobody answers: only the page matters here
    url = f"http://u:SECRET-PW@127.0.0.1:{port}/hook?token=SECRET"
    notify = {"webhooks": [{"url": url, "secret": "whsec-admin"}]}
    async with sluice([provider_for(upstream)], notify=notify) as s, app_client(s) as c:
        page = await c.get("/webhooks")
    assert page.status_code == 200
    assert "SECRET" not in page.text
    assert f"http://***@127.0.0.1:{port}/hook?token=***" in page.text
