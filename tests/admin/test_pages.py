"""Every admin page and API route, over a real running Sluice and real upstreams.

Only the HTTP hop is in-process (httpx's ASGI transport); the spool, the SMTP
listener, the scheduler and the upstreams are the real ones.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from relay.secrets import MASK
from relay.wording import when
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream

XSS = "<script>alert(1)</script>"


def message(subject: str, body: str = "hello\r\n") -> bytes:
    return (
        f"From: a@example.org\r\nTo: b@example.net\r\nSubject: {subject}\r\n"
        f"X-Trace: one\r\n\r\n{body}"
    ).encode()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def test_every_page_and_route_answers(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream, caption="Main relay")]) as s:
        await smtp_send(s.port, "a@example.org", ["b@example.net"], message("first"))
        await s.wait_idle()
        (entry,) = await s.spool.list_queue()
        async with app_client(s) as c:
            pages = {
                "/": "Deliveries per hour",
                "/providers": "Main relay",
                "/providers/up1": "Test connection",
                "/queue": entry.queue_id,
                "/log": "SUCCESS",
                f"/messages/{entry.queue_id}": "X-Trace",
            }
            for path, text in pages.items():
                r = await c.get(path)
                assert r.status_code == 200, path
                assert r.headers["content-type"].startswith("text/html")
                assert text in r.text, path
            # Times are shown as everywhere else: UTC, with the zone (relay.wording.when).
            shown = (await c.get(f"/messages/{entry.queue_id}")).text
            assert f">{when(entry.received_at)}</time>" in shown
            api = {
                "/api/overview": "counts",
                "/api/providers": "up1",
                "/api/providers/up1": "Main relay",
                "/api/queue": entry.queue_id,
                "/api/log": "success",
                f"/api/messages/{entry.queue_id}": "X-Trace",
                "/healthz": "listener",
            }
            for path, text in api.items():
                r = await c.get(path)
                assert r.status_code == 200, path
                assert text in r.text, path
                r.json()
            for path in (
                "/providers/nope",
                "/api/providers/nope",
                "/messages/NOPE",
                "/api/messages/NOPE",
                "/messages/NOPE/eml",
            ):
                assert (await c.get(path)).status_code == 404, path
            css = await c.get("/static/admin.css")
            js = await c.get("/static/admin.js")
            assert css.status_code == js.status_code == 200
            assert "text/javascript" in js.headers["content-type"]


async def test_overview_counts_outcomes_and_chart(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    async with sluice([provider_for(upstream, daily_limit=100)]) as s:
        for rcpt in ("ok1@example.net", "ok2@example.net", "bad@example.net"):
            await smtp_send(s.port, "a@example.org", [rcpt], message("n"))
        await s.wait_idle()
        async with app_client(s) as c:
            data = (await c.get("/api/overview")).json()
            assert data["counts"]["sent"] == 2
            assert data["counts"]["failed"] == 1
            assert data["last_hour"]["success"] == 2
            assert data["last_hour"]["fail"] == 1
            assert data["last_day"]["success"] == 2
            assert data["chart"]["total"] == {"success": 2, "deferred": 0, "fail": 1}
            (provider,) = data["providers"]
            assert provider["daily_limit"] == 100
            html = (await c.get("/")).text
            # Two stacked bars in the current hour: 2 successes and 1 failure.
            assert html.count('class="bar s-success"') == 1
            assert html.count('class="bar s-fail"') == 1
            assert "<title>2 SUCCESS</title>" in html


async def test_message_data_is_escaped_everywhere(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT"] = "451 4.2.0 <img src=x onerror=alert(2)> later"
    async with sluice([provider_for(upstream)]) as s:
        await smtp_send(s.port, "a@example.org", ["b@example.net"], message(XSS, f"{XSS}\r\n"))
        await eventually(lambda: _attempted(s))
        (entry,) = await s.spool.list_queue()
        async with app_client(s) as c:
            for path in ("/queue", "/log", f"/messages/{entry.queue_id}"):
                html = (await c.get(path)).text
                assert XSS not in html, path
                assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
                assert "<img src=x" not in html, path
            api = (await c.get(f"/api/messages/{entry.queue_id}")).json()
            assert api["subject"] == XSS  # JSON carries the exact text
            assert (await c.get(f"/api/messages/{entry.queue_id}")).headers[
                "content-type"
            ] == "application/json"


async def _attempted(s: object) -> bool:
    entries = await s.spool.list_queue()  # type: ignore[attr-defined]
    return bool(entries) and entries[0].attempts >= 1


async def test_queue_filter_search_and_keyset_pages(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    async with sluice(
        [provider_for(upstream)], retry={"first_delay": "1h", "max_delay": "2h"}
    ) as s:
        for i in range(5):
            await smtp_send(s.port, "a@example.org", [f"r{i}@example.net"], message(f"subj {i}"))
        async with app_client(s) as c:

            async def all_deferred() -> bool:
                r = await c.get("/api/queue", params={"status": "deferred"})
                return len(r.json()["entries"]) == 5

            await eventually(all_deferred)
            seen: list[str] = []
            params: dict[str, str | int] = {"limit": 2}
            while True:
                page = (await c.get("/api/queue", params=params)).json()
                seen += [e["email"] for e in page["entries"]]
                if page["next_before_id"] is None:
                    break
                params["before_id"] = page["next_before_id"]
            assert seen == [f"r{i}@example.net" for i in reversed(range(5))]
            html = (await c.get("/queue", params={"limit": 2})).text
            assert 'rel="next"' in html and "r4@example.net" in html and "r2@" not in html
            found = (await c.get("/api/queue", params={"search": "subj 3"})).json()["entries"]
            assert [e["email"] for e in found] == ["r3@example.net"]
            assert found[0]["attempts"] == 1
            assert found[0]["reason"] == "451 4.2.0 try later"
            none = await c.get("/api/queue", params={"status": "sent"})
            assert none.json()["entries"] == []
            # Bad filter values are ignored, not errors.
            assert (await c.get("/queue?status=bogus&limit=x&before_id=y")).status_code == 200


async def test_queue_actions_by_form_and_api(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    async with sluice(
        [provider_for(upstream)], retry={"first_delay": "1h", "max_delay": "2h"}
    ) as s:
        for i in range(4):
            await smtp_send(s.port, "a@example.org", [f"r{i}@example.net"], message(f"m{i}"))
        await eventually(lambda: _all_tried(s, 4))
        q = [e.queue_id for e in await s.spool.list_queue()]
        async with app_client(s) as c:
            token = csrf_of((await c.get("/queue")).text)
            r = await c.post(
                "/queue/action",
                data={
                    "csrf_token": token,
                    "action": "delete",
                    "queue_id": [q[0], q[1]],
                    "back": "/queue?limit=50",
                },
            )
            assert r.status_code == 303
            assert r.headers["location"] == "/queue?limit=50&done=delete&n=2&missing=0"
            assert "2 messages deleted." in (await c.get(r.headers["location"])).text
            # Deleting one already gone says so, in words that agree with the count.
            r = await c.post(
                "/queue/action",
                data={"csrf_token": token, "action": "delete", "queue_id": [q[0]]},
            )
            notice = (await c.get(r.headers["location"])).text
            assert "0 messages deleted. 1 message was no longer in the queue." in notice
            assert {e.queue_id for e in await s.spool.list_queue()} == set(q[2:])
            # Retry now: the next attempt becomes due at once (the upstream now accepts).
            upstream.reply.clear()
            r = await c.post(
                "/api/queue/retry",
                json={"queue_ids": [q[2], "NOPE"]},
                headers={"x-csrf-token": token},
            )
            assert r.json() == {"action": "retry", "done": [q[2]], "missing": ["NOPE"]}
            await upstream.wait_for(1)
            r = await c.post(f"/api/messages/{q[3]}/delete", headers={"x-csrf-token": token})
            assert r.status_code == 200
            assert (
                await c.post("/api/messages/NOPE/delete", headers={"x-csrf-token": token})
            ).status_code == 404
            bad = await c.post("/api/queue/retry", json={"ids": 1}, headers={"x-csrf-token": token})
            assert bad.status_code == 400
            r = await c.post(
                f"/messages/{q[2]}/action", data={"csrf_token": token, "action": "delete"}
            )
            assert r.status_code == 303 and r.headers["location"].startswith("/queue?done=delete")
            assert await s.spool.list_queue() == []


async def _all_tried(s: object, n: int) -> bool:
    entries = await s.spool.list_queue(statuses=None)  # type: ignore[attr-defined]
    return len(entries) == n and all(e.attempts >= 1 for e in entries)


async def test_log_filter_by_status_date_and_search(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    async with sluice([provider_for(upstream)]) as s:
        await smtp_send(s.port, "a@example.org", ["good@example.net"], message("good one"))
        await smtp_send(s.port, "a@example.org", ["bad@example.net"], message("bad one"))
        await s.wait_idle()
        async with app_client(s) as c:
            fail = (await c.get("/api/log", params={"status": "FAIL"})).json()["entries"]
            assert [e["email"] for e in fail] == ["bad@example.net"]
            assert fail[0]["code"] == 550 and "no such user" in fail[0]["reason"]
            ok = (await c.get("/api/log", params={"search": "good"})).json()["entries"]
            assert [e["status"] for e in ok] == ["success"]
            today = time.strftime("%Y-%m-%d", time.gmtime())
            same_day = await c.get("/api/log", params={"date": today, "tz": 0})
            assert len(same_day.json()["entries"]) == 2
            other = await c.get("/api/log", params={"date": "2001-01-01", "tz": 0})
            assert other.json()["entries"] == []
            html = (await c.get("/log", params={"status": "SUCCESS", "date": today})).text
            assert "good@example.net" in html and "bad@example.net" not in html


async def test_message_detail_and_raw_download(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    body = message("Grüße =?utf-8?q?encoded?=", "line\r\n.dot\r\n")
    async with sluice([provider_for(upstream)]) as s:
        await smtp_send(s.port, "a@example.org", ["b@example.net", "c@example.net"], body)
        await s.wait_idle()
        (entry, _other) = await s.spool.list_queue()
        stored = await s.spool.raw(entry.queue_id)
        async with app_client(s) as c:
            for path in (f"/messages/{entry.queue_id}/eml", f"/api/messages/{entry.queue_id}/raw"):
                r = await c.get(path)
                assert r.content == stored
                assert r.headers["content-type"] == "message/rfc822"
                assert f'filename="{entry.queue_id}.eml"' in r.headers["content-disposition"]
            detail = (await c.get(f"/api/messages/{entry.queue_id}")).json()
            assert [r["email"] for r in detail["recipients"]] == ["b@example.net", "c@example.net"]
            assert {a["status"] for a in detail["attempts"]} == {"success"}
            assert {a["status_label"] for a in detail["attempts"]} == {"SUCCESS"}
            assert ["X-Trace", "one"] in detail["headers"]
            assert detail["headers"][0][0] == "Received"
            html = (await c.get(f"/messages/{entry.queue_id}")).text
            assert "a@example.org" in html and "c@example.net" in html
            assert "250" in html  # the upstream's reply per attempt


async def test_secrets_never_reach_page_api_or_metrics(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    secret = "s3cret-Passw0rd"
    (tmp_path / "admin-pw").write_text("admin-secret-pw\n")
    (tmp_path / "token").write_text("tok-123456\n")
    provider = provider_for(upstream, username="relay", password=secret, allow_insecure_auth=True)
    async with sluice([provider]) as s:
        async with app_client(
            s, password_file=tmp_path / "admin-pw", api_token_file=tmp_path / "token"
        ) as c:
            c.headers["authorization"] = "Bearer tok-123456"
            seen = ""
            for path in (
                "/",
                "/providers",
                "/providers/up1",
                "/api/overview",
                "/api/providers",
                "/api/providers/up1",
                "/metrics",
                "/healthz",
            ):
                r = await c.get(path)
                assert r.status_code == 200, path
                seen += r.text
            assert (await c.get("/api/providers/up1")).json()["password"] == MASK
            assert MASK in (await c.get("/providers/up1")).text
            for value in (secret, "admin-secret-pw", "tok-123456"):
                assert value not in seen


async def test_test_connection_green_and_red(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    guarded = await TestUpstream(users={"relay": "right"}).start()
    try:
        providers = [
            provider_for(upstream),
            provider_for(
                guarded, "locked", username="relay", password="wrong", allow_insecure_auth=True
            ),
        ]
        async with sluice(providers) as s, app_client(s) as c:
            # An open admin called without a cookie is a script: no token needed.
            ok = (await c.post("/api/providers/up1/test")).json()
            # Once the browser session cookie exists, the token is required.
            token = csrf_of((await c.get("/providers/locked")).text)
            assert (await c.post("/api/providers/locked/test")).status_code == 403
            c.headers["x-csrf-token"] = token
            assert ok["ok"] is True
            assert [step["name"] for step in ok["steps"]] == ["connect", "EHLO", "QUIT"]
            bad = (await c.post("/api/providers/locked/test")).json()
            assert bad["ok"] is False
            assert bad["steps"][-1]["name"] == "AUTH"
            assert bad["steps"][-1]["detail"].startswith("535")
            assert (await c.post("/api/providers/nope/test")).status_code == 404
            html = (await c.post("/providers/locked/test", data={"csrf_token": token})).text
            assert "Connection test failed" in html and "535" in html
            html = (await c.post("/providers/up1/test", data={"csrf_token": token})).text
            assert "Connection works" in html
    finally:
        await guarded.stop()


async def test_reload_ok_and_failed(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        token = csrf_of((await c.get("/")).text)
        r = await c.post("/api/reload", headers={"x-csrf-token": token})
        assert r.status_code == 200 and r.json() == {"ok": True, "error": None}
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["providers"][0]["port"] = "not a port"
        s.config_path.write_text(yaml.safe_dump(cfg))
        r = await c.post("/api/reload", headers={"x-csrf-token": token})
        assert r.status_code == 422
        assert "providers.0.port" in r.json()["error"]
        r = await c.post("/reload", data={"csrf_token": token})
        assert r.headers["location"] == "/?done=reload-failed"
        html = (await c.get(r.headers["location"])).text
        assert "Last reload failed" in html and "providers.0.port" in html
        health = (await c.get("/healthz")).json()
        assert "providers.0.port" in health["last_reload_error"]


async def test_metrics_and_healthz(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream, daily_limit=50)]) as s:
        await smtp_send(s.port, "a@example.org", ["b@example.net"], message("m"))
        await s.wait_idle()
        async with app_client(s) as c:
            r = await c.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            text = r.text
            assert 'sluice_queue_recipients{status="sent"} 1.0' in text
            assert 'sluice_deliveries_total{provider="up1",status="sent"} 1.0' in text
            assert 'sluice_delivery_seconds_count{provider="up1"} 1.0' in text
            assert 'sluice_provider_daily_limit{provider="up1"} 50.0' in text
            assert "sluice_provider_sent_today" in text and "sluice_provider_health" in text
            health = (await c.get("/healthz")).json()
            assert health == {
                "status": "ok",
                "ok": True,
                "problems": [],
                "spool": True,
                "spool_writes": {
                    "failing": False,
                    "errors": 0,
                    "last_error": None,
                    "last_error_at": None,
                },
                "checkpoints": {
                    "running": True,
                    "failing": False,
                    "errors": 0,
                    "last_error": None,
                    "last_error_at": None,
                },
                "listener": True,
                "accept_workers": None,
                "oldest_pending_age": None,
                # Counted only when an alerts threshold asks (issue 16, item 7).
                "deferred": None,
                "provider_failures_last_hour": None,
                "paused": [],
                "providers": [],
                "last_reload_failed": False,
                "last_reload_error": None,
            }
            assert 'sluice_health{state="ok"} 1.0' in text
            assert "sluice_spool_writes_failing 0.0" in text
            assert s.daemon.listener is not None
            s.daemon.listener.stop_accepting()
            r = await c.get("/healthz")
            assert r.status_code == 503 and r.json()["listener"] is False
            assert r.json()["status"] == "unhealthy"
            assert r.json()["problems"] == ["nobody accepts SMTP connections"]


async def test_security_headers_on_every_response(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        for path in ("/", "/api/queue", "/static/admin.css", "/nope", "/metrics"):
            r = await c.get(path)
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
