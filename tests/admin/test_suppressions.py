"""The Suppressions page, ``/api/suppressions``, the bounce mailbox on the overview, the gauge.

Over a real running Sluice (its spool, scheduler and SMTP listener); only the
HTTP hop is in-process (httpx's ASGI transport). The bounce mailbox is a real
Dovecot (``tests/bounces/mailhost.py``), or a port nobody listens on.
"""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import httpx

from relay.model import RecipientStatus
from relay.store.suppressions import NewBounce, Threshold
from tests.admin.conftest import AppClientFactory
from tests.admin.test_pages import csrf_of
from tests.bounces.mailhost import dovecot
from tests.conftest import Running, SluiceFactory, eventually, provider_for, smtp_send
from tests.ops.test_suppression_cli import FORMULAS, assert_neutralized
from tests.peers import free_port
from tests.upstream import TestUpstream

XSS = "<script>alert(1)</script>"


def rows_of(html: str) -> list[str]:
    """The addresses the list shows, in order."""
    return re.findall(r'<tr data-address="([^"]+)"', html)


async def fill(s: Running) -> None:
    sup = s.spool.suppressions
    await sup.add("alice@example.org", reason="asked by phone")
    await sup.add("bob@example.org", scope="news", source="api", reason="unsubscribed")
    await sup.add("bob@example.org", scope="offers", source="api", reason="unsubscribed")
    await sup.add("carol@example.net", source="import", reason="old list")
    await sup.add("dave@example.net", scope="news", reason="complained")


async def test_list_search_filters_and_keyset_paging(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        await fill(s)
        page = await c.get("/suppressions")
        assert page.status_code == 200
        assert 'href="/suppressions" aria-current="page"' in page.text  # in the nav
        assert rows_of(page.text) == [
            "alice@example.org",
            "bob@example.org",
            "bob@example.org",
            "carol@example.net",
            "dave@example.net",
        ]
        assert rows_of((await c.get("/suppressions?search=EXAMPLE.NET")).text) == [
            "carol@example.net",
            "dave@example.net",
        ]
        news = (await c.get("/suppressions?scope=news")).text
        assert rows_of(news) == ["bob@example.org", "dave@example.net"]
        assert rows_of((await c.get("/suppressions?scope=")).text) == [
            "alice@example.org",
            "carol@example.net",
        ]
        assert rows_of((await c.get("/suppressions?source=api&scope=*")).text) == [
            "bob@example.org",
            "bob@example.org",
        ]
        # the scope filter offers the scopes in use
        assert '<option value="offers"' in page.text and '<option value="news"' in page.text

        # Keyset paging, 2 a page: bob's two scopes are never split over two pages.
        seen: list[str] = []
        url: str | None = "/suppressions?limit=2"
        for _ in range(10):
            assert url is not None
            html = (await c.get(url)).text
            seen += rows_of(html)
            match = re.search(r'href="([^"]+)" rel="next"', html)
            url = match.group(1).replace("&amp;", "&") if match else None
            if url is None:
                break
        assert seen == rows_of(page.text)

        # The API: same filters, same paging.
        r = await c.get("/api/suppressions", params={"scope": "news"})
        assert [e["address"] for e in r.json()["entries"]] == [
            "bob@example.org",
            "dave@example.net",
        ]
        api_seen: list[tuple[str, str]] = []
        after = None
        for _ in range(10):
            params = {"limit": "2", **({"after": after} if after else {})}
            body = (await c.get("/api/suppressions", params=params)).json()
            api_seen += [(e["address"], e["scope"]) for e in body["entries"]]
            after = body["next_after"]
            if after is None:
                break
        assert len(api_seen) == 5 and len(set(api_seen)) == 5
        one = (await c.get("/api/suppressions", params={"search": "carol"})).json()["entries"]
        assert one == [
            {
                "address": "carol@example.net",
                "scope": "",
                "source": "import",
                "reason": "old list",
                "created_at": one[0]["created_at"],
                "expires_at": None,
                "expired": False,
            }
        ]


async def test_add_and_remove_by_form_need_the_csrf_token(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right-pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw") as c:
            login = await c.get("/login")
            form = {"username": "admin", "password": "right-pw", "csrf_token": csrf_of(login.text)}
            assert (await c.post("/login", data=form)).status_code == 303
            token = csrf_of((await c.get("/suppressions")).text)
            add = {
                "address": " <Eve@Example.org> ",
                "scope": "news",
                "reason": "asked to stop",
                "expires_in": "30d",
            }
            refused = await c.post("/suppressions/add", data=add)
            assert refused.status_code == 403
            refused = await c.post("/suppressions/add", data={**add, "csrf_token": "forged"})
            assert refused.status_code == 403
            assert await s.spool.suppressions.entries_of("eve@example.org") == []

            before = time.time()
            r = await c.post("/suppressions/add", data={**add, "csrf_token": token})
            assert r.status_code == 303
            (entry,) = await s.spool.suppressions.entries_of("eve@example.org")
            assert (entry.scope, entry.source, entry.reason) == ("news", "manual", "asked to stop")
            assert entry.expires_at is not None
            assert before + 30 * 86400 - 5 < entry.expires_at < time.time() + 30 * 86400 + 5
            shown = await c.get(r.headers["location"])
            assert "Address added to the suppression list." in shown.text
            assert rows_of(shown.text) == ["eve@example.org"]

            # Bad input: a clear answer, the form kept, nothing stored.
            bad = await c.post(
                "/suppressions/add",
                data={"address": "not-an-address", "reason": "x", "csrf_token": token},
            )
            assert bad.status_code == 400
            assert "not an address: " in bad.text and 'value="not-an-address"' in bad.text
            bad = await c.post(
                "/suppressions/add",
                data={"address": "x@example.org", "expires_in": "soon", "csrf_token": token},
            )
            assert bad.status_code == 400 and "expires_in" in bad.text
            assert await s.spool.suppressions.entries_of("x@example.org") == []

            # Remove: the button asks first, and the post needs the token.
            assert 'data-confirm="Remove eve@example.org (stream news)' in shown.text
            remove = {"address": "eve@example.org", "scope": "news", "back": "/suppressions"}
            assert (await c.post("/suppressions/remove", data=remove)).status_code == 403
            assert len(await s.spool.suppressions.entries_of("eve@example.org")) == 1
            r = await c.post("/suppressions/remove", data={**remove, "csrf_token": token})
            assert r.status_code == 303
            assert await s.spool.suppressions.entries_of("eve@example.org") == []
            assert "1 suppression entry removed." in (await c.get(r.headers["location"])).text

            # The JSON API by cookie needs the header token too.
            assert (
                await c.post("/api/suppressions", json={"address": "f@x.org"})
            ).status_code == 403
            r = await c.post(
                "/api/suppressions", json={"address": "f@x.org"}, headers={"x-csrf-token": token}
            )
            assert r.status_code == 201
            assert (await c.delete("/api/suppressions/f@x.org")).status_code == 403
            r = await c.delete("/api/suppressions/f@x.org", headers={"x-csrf-token": token})
            assert r.status_code == 200 and r.json()["removed"] == 1


async def test_csv_export_then_import_round_trip(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        sup = s.spool.suppressions
        await sup.add("a@example.org", reason='said "stop", twice\nthen again')
        await sup.add("b@example.org", scope="news", source="api", expires_at=4102444800.0)
        await sup.add("c@example.org", source="bounce", reason="3 bounces; last: 5.1.1")
        before = {(e.address, e.scope): e for e in await sup.page()}

        exported = await c.get("/suppressions.csv")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert "attachment" in exported.headers["content-disposition"]
        table = list(csv.reader(io.StringIO(exported.text)))
        assert table[0] == ["address", "scope", "source", "reason", "created_at", "expires_at"]
        assert len(table) == 4
        assert table[2][5] == "2100-01-01T00:00:00+00:00"
        # filters apply to the export as to the list
        only_news = list(
            csv.reader(io.StringIO((await c.get("/suppressions.csv?scope=news")).text))
        )
        assert [r[0] for r in only_news[1:]] == ["b@example.org"]

        for address, _scope in before:
            await sup.remove(address)
        assert await sup.page() == []

        token = csrf_of((await c.get("/suppressions")).text)
        files = {"file": ("list.csv", exported.content, "text/csv")}
        refused = await c.post("/suppressions/import", files=files)
        assert refused.status_code == 403
        assert await sup.page() == []
        r = await c.post("/suppressions/import", data={"csrf_token": token}, files=files)
        assert r.status_code == 303
        assert "3 suppression entries imported." in (await c.get(r.headers["location"])).text
        after = {(e.address, e.scope): e for e in await sup.page()}
        assert after.keys() == before.keys()
        for key, old in before.items():
            new = after[key]
            assert new.source == "import"
            assert new.reason == (" ".join(old.reason.split()) or "imported")
            assert abs(new.created_at - old.created_at) < 1  # CSV keeps whole seconds
            assert new.expires_at == old.expires_at

        # A broken file is refused whole, naming the line.
        broken = b"address,scope\nok@example.org,\nnot an address,\n"
        r = await c.post(
            "/suppressions/import",
            data={"csrf_token": token},
            files={"file": ("bad.csv", broken, "text/csv")},
        )
        assert r.status_code == 400 and "line 3" in r.text
        assert await sup.entries_of("ok@example.org") == []
        r = await c.post(
            "/suppressions/import",
            data={"csrf_token": token},
            files={"file": ("bad.csv", b"email\nx@example.org\n", "text/csv")},
        )
        assert r.status_code == 400 and "&#39;address&#39; column" in r.text


async def test_csv_export_neutralizes_formulas_and_import_restores_them(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right-pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw", token="app-token") as c:
            auth = {"authorization": "Bearer app-token"}
            sup = s.spool.suppressions
            for address, scope, reason in FORMULAS:
                await sup.add(address, scope=scope, reason=reason)
            before = await sup.page()

            for route in ("/api/suppressions.csv", "/suppressions.csv"):
                page = await c.get(route, headers=auth)
                assert page.status_code == 200, route
                table = list(csv.reader(io.StringIO(page.text)))
                assert len(table) == len(FORMULAS) + 1
                assert_neutralized(table)
            exported = (await c.get("/api/suppressions.csv", headers=auth)).content

            for e in before:
                await sup.remove(e.address)
            r = await c.post(
                "/api/suppressions.csv",
                content=exported,
                headers={**auth, "content-type": "text/csv"},
            )
            assert r.status_code == 200 and r.json() == {"imported": len(FORMULAS)}
            after = await sup.page()
            assert [(e.address, e.scope, e.reason, int(e.created_at)) for e in after] == [
                (e.address, e.scope, e.reason, int(e.created_at)) for e in before
            ]


async def test_api_add_and_delete_with_a_bearer_token(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("right-pw\n")
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, password_file=tmp_path / "pw", token="app-token") as c:
            auth = {"authorization": "Bearer app-token"}
            body = {"address": "Gone@Example.org", "reason": "unsubscribed in the app"}
            assert (await c.post("/api/suppressions", json=body)).status_code == 401
            r = await c.post("/api/suppressions", json=body, headers=auth)
            assert r.status_code == 201
            assert r.json()["address"] == "gone@example.org" and r.json()["source"] == "api"
            r = await c.post(
                "/api/suppressions",
                json={"address": "later@example.org", "scope": "news", "expires_in": "1h"},
                headers=auth,
            )
            assert r.status_code == 201 and r.json()["expires_at"] > time.time() + 3500
            for bad in (
                {"address": "nope"},
                {"address": 5},
                {"address": "a@b.org", "expires_at": "tomorrow"},
                {"address": "a@b.org", "expires_at": 1, "expires_in": "1h"},
                ["a@b.org"],
            ):
                r = await c.post("/api/suppressions", json=bad, headers=auth)
                assert r.status_code == 400, bad
                assert r.json()["error"]

            one = await c.get("/api/suppressions/gone@example.org", headers=auth)
            assert one.status_code == 200
            assert [e["reason"] for e in one.json()["entries"]] == ["unsubscribed in the app"]
            assert one.json()["bounces"] == []

            # The relay honours it: the pushed address is not sent, the other one is.
            refused, _ = await smtp_send(
                s.port,
                "app@example.org",
                ["gone@example.org", "kept@example.org"],
                b"From: app@example.org\r\nSubject: after unsubscribe\r\n\r\nbody\r\n",
            )
            assert refused == {}
            await s.wait_idle()
            statuses = {e.email: e.status for e in await s.spool.list_queue()}
            assert statuses == {
                "gone@example.org": RecipientStatus.SUPPRESSED,
                "kept@example.org": RecipientStatus.SENT,
            }

            r = await c.delete("/api/suppressions/gone@example.org", headers=auth)
            assert r.status_code == 200 and r.json() == {
                "address": "gone@example.org",
                "removed": 1,
            }
            r = await c.delete("/api/suppressions/gone@example.org", headers=auth)
            assert r.status_code == 404
            r = await c.delete("/api/suppressions/later@example.org?scope=other", headers=auth)
            assert r.status_code == 404
            r = await c.delete("/api/suppressions/later@example.org?scope=news", headers=auth)
            assert r.status_code == 200
            assert (
                await c.get("/api/suppressions/gone@example.org", headers=auth)
            ).status_code == 404

            # CSV both ways over the API.
            csv_in = b"address,scope,reason\nx@example.org,,old\ny@example.org,news,\n"
            r = await c.post(
                "/api/suppressions.csv",
                content=csv_in,
                headers={**auth, "content-type": "text/csv"},
            )
            assert r.status_code == 200 and r.json() == {"imported": 2}
            out = await c.get("/api/suppressions.csv", headers=auth)
            assert [row[:3] for row in csv.reader(io.StringIO(out.text))][1:] == [
                ["x@example.org", "", "import"],
                ["y@example.org", "news", "import"],
            ]


async def test_hostile_address_reason_and_bounce_are_escaped(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        address = f"x{XSS}@example.org".lower()
        raw = (
            b"From: MAILER-DAEMON@example.net\r\nContent-Type: text/html\r\n\r\n"
            b"<html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>\r\n"
        )
        entry = await s.spool.suppressions.record_bounce(
            NewBounce(
                address=address,
                kind="hard",
                source="dsn",
                status="5.1.1",
                diagnostic=f"550 5.1.1 {XSS} no such user",
                stream=XSS,
                key="hostile-1",
                raw=raw,
            ),
            Threshold(hard=1),
        )
        assert entry is not None and XSS in entry.reason
        (bounce,) = await s.spool.suppressions.bounces_of(address)

        listing = await c.get("/suppressions")
        detail_url = re.search(r'<a href="(/suppressions/[^"]+)">', listing.text)
        assert detail_url is not None
        detail = await c.get(detail_url.group(1).replace("&amp;", "&"))
        assert detail.status_code == 200
        for page in (listing, detail):
            assert "<script>" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert f'href="/bounces/{bounce.id}/raw"' in detail.text

        for url in (f"/bounces/{bounce.id}/raw", f"/api/bounces/{bounce.id}/raw"):
            view = await c.get(url)
            assert view.status_code == 200
            assert view.headers["content-type"] == "text/plain; charset=utf-8"
            assert view.headers["x-content-type-options"] == "nosniff"
            assert view.headers["content-disposition"].startswith("inline")
            assert view.content == raw
        download = await c.get(f"/bounces/{bounce.id}/raw?download=1")
        assert download.headers["content-disposition"].startswith("attachment")
        assert (await c.get("/bounces/999999/raw")).status_code == 404

        api = (await c.get(f"/api/suppressions/{address}")).json()
        assert api["bounces"][0]["diagnostic"] == f"550 5.1.1 {XSS} no such user"
        assert api["bounces"][0]["raw_url"] == f"/api/bounces/{bounce.id}/raw"
        # The page's bounce list says where each came from.
        assert "bounce mailbox" in detail.text and "5.1.1" in detail.text


async def test_status_badges_and_filters_know_bounced_and_suppressed(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        css = (await c.get("/static/admin.css")).text
        for status in ("bounced", "suppressed"):
            assert f".badge.s-{status}" in css
        queue = (await c.get("/queue")).text
        assert 'name="status" value="suppressed"' in queue
        log = (await c.get("/log")).text
        assert 'name="status" value="bounced"' in log and 'name="status" value="suppressed"' in log


async def test_suppressions_gauge_by_source(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        await fill(s)
        await s.spool.suppressions.add("old@example.org", expires_at=time.time() - 60)
        text = (await c.get("/metrics")).text
        found = dict(re.findall(r'^sluice_suppressions\{source="(\w+)"\} (\S+)$', text, re.M))
        # the expired entry is not in force: manual counts alice and dave only
        assert found == {"bounce": "0.0", "manual": "2.0", "import": "1.0", "api": "2.0"}


async def overview_mailbox(c: httpx.AsyncClient) -> dict[str, object]:
    data: dict[str, object] = (await c.get("/api/overview")).json()["bounce_mailbox"]
    return data


async def test_overview_shows_the_bounce_mailbox(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    # Not configured.
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        assert await overview_mailbox(c) == {"state": "off", "configured": False}
        assert "Not configured" in (await c.get("/")).text

    # A real Dovecot: read, so "ok" with the time of the last poll.
    async with dovecot({"bounces": "pw-1"}) as imap:
        box = {
            "host": "127.0.0.1",
            "port": imap.port,
            "encryption": "none",
            "username": "bounces",
            "password": "pw-1",
            "poll_interval": "200ms",
        }
        async with sluice([provider_for(upstream)], bounces={"mailbox": box}) as s:
            async with app_client(s) as c:

                async def read() -> bool:
                    return (await overview_mailbox(c))["state"] == "ok"

                await eventually(read, within=30)
                data = await overview_mailbox(c)
                assert isinstance(data["last_ok_at"], float)
                assert data["last_ok_at"] <= time.time() and data["error"] == ""
                page = (await c.get("/")).text
                assert 'id="bounce-mailbox"' in page and 'class="health h-ok"' in page

    # Nobody listens: failing, with the error, and the relay still delivers.
    box = {**box, "port": free_port(), "poll_interval": "200ms", "timeout": "2s"}
    async with sluice([provider_for(upstream)], bounces={"mailbox": box}) as s:
        async with app_client(s) as c:

            async def failing() -> bool:
                return (await overview_mailbox(c))["state"] == "failing"

            await eventually(failing, within=30)
            data = await overview_mailbox(c)
            assert data["error"] and isinstance(data["failures"], int) and data["failures"] >= 1
            page = (await c.get("/")).text
            assert 'class="health h-error">failing' in page
            assert str(data["error"]).split(":")[0] in page


async def test_a_bounce_after_delivery_shows_on_the_message_log_and_address_pages(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        refused, _ = await smtp_send(
            s.port,
            "app@example.org",
            ["gone@example.net"],
            b"From: app@example.org\r\nSubject: will bounce\r\n\r\nbody\r\n",
        )
        assert refused == {}
        await s.wait_idle()
        (entry,) = await s.spool.list_queue()
        assert entry.status is RecipientStatus.SENT
        # What the poller records when the DSN for it arrives (VERP names the message).
        await s.spool.suppressions.record_bounce(
            NewBounce(
                address="gone@example.net",
                kind="hard",
                source="dsn",
                status="5.1.1",
                diagnostic="smtp; 550 5.1.1 user unknown",
                queue_id=entry.queue_id,
                key="dsn-1",
                raw=b"Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n",
            ),
            Threshold(hard=1),
        )
        message = (await c.get(f"/messages/{entry.queue_id}")).text
        assert '<span class="badge s-bounced">BOUNCED</span>' in message
        assert "hard bounce: 5.1.1 smtp; 550 5.1.1 user unknown" in message
        log = (await c.get("/log?status=bounced")).text
        assert entry.queue_id in log and "s-bounced" in log
        assert entry.queue_id not in (await c.get("/log?status=suppressed")).text
        # The address page links the bounce to its message, and the threshold entry is there.
        detail = (await c.get("/suppressions/gone@example.net")).text
        assert f'href="/messages/{entry.queue_id}"' in detail
        assert "1 bounces; last: 5.1.1 smtp; 550 5.1.1 user unknown" in detail


async def test_an_oversized_upload_is_refused_before_it_is_read_whole(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        async with app_client(s, token="tok") as c:
            token = csrf_of((await c.get("/suppressions")).text)
            big = b"address\n" + b"someone@example.org\n" * (5 * 1024 * 1024 // 20)
            files = {"file": ("big.csv", big, "text/csv")}
            # A browser (cookie): the guard stops reading at its bound.
            r = await c.post("/suppressions/import", data={"csrf_token": token}, files=files)
            assert r.status_code == 413
            # A script (bearer token, no cookie): the route's own limit.
            c.cookies.clear()
            auth = {"authorization": "Bearer tok"}
            r = await c.post("/suppressions/import", files=files, headers=auth)
            assert r.status_code == 400 and "larger than 4 MiB" in r.text
            r = await c.post(
                "/api/suppressions.csv", content=big, headers={**auth, "content-type": "text/csv"}
            )
            assert r.status_code == 413
            assert await s.spool.suppressions.page() == []
