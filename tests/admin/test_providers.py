"""The provider list (every field, health colours, Test connection per row) and
Send test message, over a real running Sluice and real upstreams.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from relay.secrets import MASK
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def row_of(html: str, pid: str) -> str:
    match = re.search(rf'<tr data-provider="{pid}">(.*?)</tr>', html, re.S)
    assert match, f"no row for {pid}"
    return match.group(1)


async def settled(c: httpx.AsyncClient, qid: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        view: dict[str, Any] = (await c.get(f"/api/test-messages/{qid}")).json()
        return view if view["settled"] else None

    result: dict[str, Any] = await eventually(done)
    return result


async def test_the_list_shows_every_field_health_and_tests_each_connection(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    guarded = await TestUpstream(users={"relay": "right"}).start()
    try:
        providers = [
            provider_for(
                upstream,
                caption="Main relay",
                username="user1",
                password="s3cret-pw",
                allow_insecure_auth=True,
                send_from="app@example.org",
                send_from_name="The App",
            ),
            provider_for(
                guarded, "locked", username="relay", password="wrong", allow_insecure_auth=True
            ),
            provider_for(upstream, "spare", enabled=False),
        ]
        upstream.users = {"user1": "s3cret-pw"}
        async with sluice(providers) as s, app_client(s) as c:
            html = (await c.get("/providers")).text
            assert "s3cret-pw" not in html
            row = row_of(html, "up1")
            for text in (
                "Main relay",
                "smtp",
                upstream.host,
                str(upstream.port),
                "user1",
                MASK,
                "app@example.org",
                "The App",
                "none",
                "yes",
                "health h-unknown",  # grey: nothing tried yet
                "Test connection",
            ):
                assert text in row, text
            assert ">no<" in row_of(html, "spare")

            # Health after real deliveries: green for up1, red for locked.
            await smtp_send(s.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nx\r\n")
            await s.wait_idle()
            html = (await c.get("/providers")).text
            assert "health h-ok" in row_of(html, "up1")

            # Test connection from the list (the form without script): the answer in the row.
            token = csrf_of(html)
            r = await c.post("/providers/up1/test", data={"csrf_token": token, "from": "list"})
            assert r.status_code == 200
            assert 'class="test-result good"' in row_of(r.text, "up1")
            assert "✔ works" in row_of(r.text, "up1")
            r = await c.post("/providers/locked/test", data={"csrf_token": token, "from": "list"})
            locked = row_of(r.text, "locked")
            assert 'class="test-result bad"' in locked and "AUTH" in locked and "535" in locked
            # The row of a provider not tested shows no verdict.
            assert "✔" not in row_of(r.text, "up1")
    finally:
        await guarded.stop()


async def test_send_test_message_through_the_chosen_provider(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    upstream2: TestUpstream,
    app_client: AppClientFactory,
) -> None:
    upstream2.reply["RCPT:nobody@example.net"] = "550 5.1.1 no such user"
    providers = [
        provider_for(upstream, priority=1),
        provider_for(upstream2, "second", priority=9, send_from="relay@example.org"),
        provider_for(upstream2, "off", enabled=False),
    ]
    async with sluice(providers) as s, app_client(s) as c:
        # A browser session, as the page's script has: the CSRF token is required.
        token = csrf_of((await c.get("/providers")).text)
        r = await c.post("/api/providers/second/send-test", json={"to": "ops@example.net"})
        assert r.status_code == 403 and upstream2.messages == []
        c.headers["x-csrf-token"] = token
        # Pinned to "second", although routing would pick up1 first.
        r = await c.post("/api/providers/second/send-test", json={"to": "ops@example.net"})
        assert r.status_code == 202
        qid = r.json()["queue_id"]
        assert r.json()["status_url"] == f"/api/test-messages/{qid}"
        view = await settled(c, qid)
        assert view["status"] == "sent" and view["provider"] == "second"
        assert view["reply"].startswith("250") and view["code"] == 250
        (got,) = await upstream2.wait_for(1)
        assert upstream.messages == []
        assert got.recipients == ["ops@example.net"] and got.sender == "relay@example.org"
        assert b"Subject: Sluice test message via second" in got.data
        assert b"X-Sluice-Provider" not in got.data  # removed before sending, as always
        # It went through the spool like any message: queue and log have it.
        (entry,) = await s.spool.list_queue(search=qid)
        assert entry.status == "sent"
        assert [e.status for e in await s.spool.list_log(search=qid)] == ["success"]

        # A permanent refusal is the final answer too, with the provider's reply.
        r = await c.post("/api/providers/second/send-test", json={"to": "nobody@example.net"})
        view = await settled(c, r.json()["queue_id"])
        assert view["status"] == "failed" and view["reply"].startswith("550 5.1.1")

        # Refusals: clear answers, nothing queued.
        before = len(await s.spool.list_queue())
        for pid, body, status in (
            ("second", {"to": "not an address"}, 400),
            ("second", {"to": "a@b.example\r\nBcc: x@evil.example"}, 400),
            ("second", {}, 400),
            ("nope", {"to": "ops@example.net"}, 404),
            ("off", {"to": "ops@example.net"}, 409),
        ):
            r = await c.post(f"/api/providers/{pid}/send-test", json=body)
            assert r.status_code == status, (pid, body)
            assert r.json()["error"]
        assert len(await s.spool.list_queue()) == before
        assert (await c.get("/api/test-messages/NOPE")).status_code == 404

        # The page form: queue, then the list shows the message until it settles.
        r = await c.post(
            "/providers/send-test",
            data={"csrf_token": token, "provider": "up1", "to": "page@example.net"},
        )
        assert r.status_code == 303
        location = r.headers["location"]
        assert location.startswith("/providers?test_message=")
        qid = location.split("=", 1)[1].split("#", 1)[0]
        await settled(c, qid)
        html = (await c.get(location)).text
        assert 'id="test-message"' in html and 'data-settled="yes"' in html
        assert "250 2.0.0 OK queued upstream" in html
        r = await c.post(
            "/providers/send-test",
            data={"csrf_token": token, "provider": "up1", "to": "nonsense"},
        )
        assert r.status_code == 400 and "enter one e-mail address" in r.text
        assert 'value="nonsense"' in r.text  # what was typed stays in the form
