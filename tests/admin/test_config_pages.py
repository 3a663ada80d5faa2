"""The settings pages and the config-edit API over HTTP, against a real running Sluice.

The daemon runs in-process with its real config file, spool and reload; only
the HTTP hop is in-process (httpx's ASGI transport). Providers are real
aiosmtpd upstreams that ask for AUTH, so a wrong password is the server's
own refusal. What is checked is what the operator sees (the error beside its
field, in words) and the file on disk (only the edited block changed, every
comment kept, no typed secret in it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import json
import re
import stat
from pathlib import Path

import httpx
import imapclient
import pytest
import yaml

from relay.config import load
from tests.admin.conftest import AppClientFactory
from tests.admin.test_controls import login
from tests.admin.test_pages import csrf_of
from tests.bounces.mailhost import dovecot
from tests.conftest import Running, SluiceFactory, provider_for, smtp_send
from tests.upstream import TestUpstream

#: the typed password: distinctive, so that a grep finds every place it went
TYPED = "Typed-Pa55-q7Zx9"
WRONG = "not-the-password"


async def annotate(s: Running) -> str:
    """Give the config file comments (as an operator's file has), and have the daemon load it."""
    text = s.config_path.read_text()
    text = "# Sluice on mail-1: reviewed in git, keep the comments\n" + text.replace(
        "providers:\n", "providers:  # where mail goes\n# the first one is the office relay\n", 1
    )
    text += "# end of file: nothing below\n"
    s.config_path.write_text(text)
    assert await s.daemon.reload()
    return text


def field_error(html: str, name: str) -> str:
    """The error shown beside the field ``name`` ('' when none)."""
    block = re.search(
        rf'<div class="field[^"]*" data-field="{re.escape(name)}">(.*?)</div>\s*</div>', html, re.S
    )
    assert block is not None, f"no field {name} on the page"
    found = re.search(r'<p class="error field-error"[^>]*>(.*?)</p>', block.group(1), re.S)
    return found.group(1).strip() if found else ""


def form_of(html: str) -> dict[str, str]:
    """The text fields, selects and ticked boxes of the first settings form, as a browser posts."""
    form = re.search(
        r'<form method="post" action="[^"]*" class="settings-form".*?</form>', html, re.S
    )
    assert form is not None
    out: dict[str, str] = {}
    for tag in re.finditer(r"<input [^>]*>", form.group(0)):
        t = tag.group(0)
        name = re.search(r'name="([^"]+)"', t)
        if name is None or " disabled" in t:
            continue
        kind = re.search(r'type="([^"]+)"', t)
        if kind and kind.group(1) == "checkbox":
            if " checked" in t:
                out[name.group(1)] = "on"
            continue
        value = re.search(r'value="([^"]*)"', t)
        out[name.group(1)] = value.group(1) if value else ""
    for sel in re.finditer(r'<select id="[^"]*" name="([^"]+)"(.*?)</select>', form.group(0), re.S):
        chosen = re.search(r'<option value="([^"]*)" selected', sel.group(2))
        if chosen is not None:
            out[sel.group(1)] = chosen.group(1)
    return {k: v.replace("&amp;", "&") for k, v in out.items()}


async def csrf(c: httpx.AsyncClient) -> dict[str, str]:
    """The session's CSRF header, as the page's script sends it with API calls."""
    return {"X-CSRF-Token": csrf_of((await c.get("/providers")).text)}


def secret_file(path: str) -> tuple[str, int]:
    """A secrets file's value and mode."""
    p = Path(path)
    return p.read_text().strip(), stat.S_IMODE(p.stat().st_mode)


def only_added(before: str, after: str) -> list[str]:
    """The lines of ``after`` that ``before`` has not, checking that none of ``before`` went."""
    old, new = before.splitlines(), after.splitlines()
    i = 0
    added: list[str] = []
    for line in new:
        if i < len(old) and line == old[i]:
            i += 1
        else:
            added.append(line)
    assert i == len(old), "\n".join(difflib.unified_diff(old, new, lineterm=""))
    return added


async def test_add_a_provider_from_a_preset_wrong_password_then_right(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory, tmp_path: Path
) -> None:
    guarded = await TestUpstream(users={"relay": TYPED}).start()
    try:
        async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
            before = await annotate(s)
            providers = await c.get("/providers")
            assert 'href="/providers/new"' in providers.text
            chooser = await c.get("/providers/new")
            assert "SendGrid" in chooser.text and "checked 2026-11-30" in chooser.text
            page = await c.get("/providers/new?preset=sendgrid")
            assert page.status_code == 200
            assert 'value="smtp.sendgrid.net"' in page.text and "preset-note" in page.text
            form = form_of(page.text)
            assert form["encryption"] == "starttls" and form["port"] == "587"
            form.update(
                id="guarded",
                host=guarded.host,
                port=str(guarded.port),
                encryption="none",
                allow_insecure_auth="on",
                username="relay",
                password=WRONG,
                daily_limit="500",
            )
            # Wrong: refused, the server's answer beside the password field; nothing written.
            refused = await c.post("/providers/new", data=form)
            assert refused.status_code == 422
            assert "535" in field_error(refused.text, "password")
            assert "1 field needs attention: Password" in refused.text  # the summary above
            assert field_error(refused.text, "host") == ""
            assert s.config_path.read_text() == before
            assert WRONG not in refused.text
            # The form keeps what was typed (never the password) for the retry.
            again = form_of(refused.text)
            assert again["host"] == guarded.host and again["password"] == ""
            # Right: saved, reloaded, only the new block added, the comments where they were.
            again["password"] = TYPED
            saved = await c.post("/providers/new", data=again)
            assert saved.status_code == 303, saved.text
            assert saved.headers["location"].startswith("/providers/guarded?saved=1")
            after = s.config_path.read_text()
            added = only_added(before, after)
            assert added[0].lstrip().startswith("- id: guarded") or "id: guarded" in added[0]
            assert not any("#" in line for line in added)
            assert s.daemon.config.provider("guarded").daily_limit == 500
            shown = await c.get(saved.headers["location"])
            assert "✔ Saved" in shown.text and 'id="edit-button"' in shown.text
            # The typed password is in a 0600 file, and nowhere the page, the file or the API shows.
            block = yaml.safe_load(after)["providers"][-1]
            assert secret_file(block["password_file"]) == (TYPED, 0o600)
            assert "password" not in block
            for text in (
                after,
                shown.text,
                (await c.get("/api/providers")).text,
                (await c.get("/providers/guarded/edit")).text,
                json.dumps([dataclasses.asdict(a) for a in await s.spool.audit_log(limit=50)]),
            ):
                assert TYPED not in text
            # A new server name with the saved password kept: refused, it is not sent there.
            r = await c.patch(
                "/api/providers/guarded", headers=await csrf(c), json={"host": "localhost"}
            )
            assert r.status_code == 422
            assert "type the password again" in r.json()["errors"]["password"]
            # Mail goes through it (the old provider disabled by the API).
            r = await c.patch("/api/providers/up1", headers=await csrf(c), json={"enabled": False})
            assert r.status_code == 200, r.text
            assert TYPED not in r.text
            await smtp_send(
                s.port, "app@example.org", ["x@example.net"], b"Subject: t\r\n\r\nb\r\n"
            )
            (got,) = await guarded.wait_for(1, within=15)
            assert got.recipients == ["x@example.net"]
    finally:
        await guarded.stop()


async def test_a_microsoft_365_provider_is_saved_then_its_page_offers_connect(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        page = await c.get("/providers/new?preset=microsoft365")
        assert "Sign in with Connect after saving" in page.text
        form = form_of(page.text)
        assert form["auth_mechanism"] == "xoauth2" and form["limit_unit"] == "recipients"
        form.update(id="m365", username="relay@contoso.example")
        form["oauth2.client_id"] = "0f1e2d3c-client"
        form["oauth2.client_secret"] = TYPED
        for key in ("oauth2.token_url", "oauth2.device_authorization_url"):
            assert "{tenant}" in form[key]
            form[key] = form[key].replace("{tenant}", "contoso.example")
        saved = await c.post("/providers/new", data=form)
        assert saved.status_code == 303, saved.text
        assert saved.headers["location"].endswith("#sign-in")
        shown = await c.get(saved.headers["location"])
        assert 'id="connect-button" class="primary"' in shown.text
        assert "press Connect" in shown.text
        p = s.daemon.config.provider("m365")
        assert p.oauth2 is not None and p.oauth2.client_id == "0f1e2d3c-client"
        assert (p.daily_limit, p.limit_window) == (10000, "rolling_24h")
        assert TYPED not in shown.text and TYPED not in s.config_path.read_text()
        # Another token endpoint does not get the saved client secret unseen.
        r = await c.patch(
            "/api/providers/m365",
            headers=await csrf(c),
            json={"oauth2": {"token_url": "https://login.example.net/token"}},
        )
        assert r.status_code == 422
        assert "client secret again" in r.json()["errors"]["oauth2.client_secret"]
        # Nor does another device authorization endpoint (Connect posts the secret there).
        r = await c.patch(
            "/api/providers/m365",
            headers=await csrf(c),
            json={"oauth2": {"device_authorization_url": "https://login.example.net/device"}},
        )
        assert r.status_code == 422
        assert "client secret again" in r.json()["errors"]["oauth2.client_secret"]


async def test_values_from_the_environment_are_shown_read_only_with_their_source(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    app_client: AppClientFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guarded = await TestUpstream(users={"relay": TYPED}).start()
    monkeypatch.setenv("SLUICE_TEST_HOST", guarded.host)
    monkeypatch.setenv("SLUICE_TEST_PW", TYPED)
    provider = provider_for(
        guarded,
        host="${SLUICE_TEST_HOST}",
        username="relay",
        password_env="SLUICE_TEST_PW",
        allow_insecure_auth=True,
    )
    try:
        async with sluice([provider]) as s, app_client(s) as c:
            page = await c.get("/providers/up1/edit")
            assert "Read-only: from the environment variable SLUICE_TEST_HOST" in page.text
            assert "Read-only: from the environment variable SLUICE_TEST_PW" in page.text
            assert re.search(r'<input type="text" id="f-host"[^>]* readonly', page.text)
            assert re.search(r'<input type="password" id="f-password"[^>]* disabled', page.text)
            assert TYPED not in page.text
            before = s.config_path.read_text()
            form = form_of(page.text)
            form["daily_limit"] = "42"
            saved = await c.post("/providers/up1/edit", data=form)
            assert saved.status_code == 303, saved.text
            after = s.config_path.read_text()
            assert "${SLUICE_TEST_HOST}" in after and "password_env: SLUICE_TEST_PW" in after
            assert only_added(before, after) == ["  daily_limit: 42"]
            # The API cannot change them either: the reason, beside the field.
            r = await c.patch(
                "/api/providers/up1", headers=await csrf(c), json={"password": "other-pw"}
            )
            assert r.status_code == 422 and "SLUICE_TEST_PW" in r.json()["errors"]["password"]
    finally:
        await guarded.stop()


async def test_save_anyway_keeps_a_provider_whose_account_does_not_work_yet(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    guarded = await TestUpstream(users={"relay": TYPED}).start()
    routes = [{"recipient_domain": ["example.com"], "providers": ["up1"]}]
    try:
        async with sluice([provider_for(upstream)], routes=routes) as s, app_client(s) as c:
            form = form_of((await c.get("/providers/new?preset=smtp")).text)
            form.update(
                id="later",
                host=guarded.host,
                port=str(guarded.port),
                encryption="none",
                allow_insecure_auth="on",
                username="relay",
                password=WRONG,
                save_anyway="on",
            )
            saved = await c.post("/providers/new", data=form)
            assert saved.status_code == 303, saved.text
            shown = await c.get(saved.headers["location"])
            assert "Saved without a working connection" in shown.text
            # What the server answered at Save is shown (once: it is a flash, not in the URL).
            answer = re.search(r'<p id="save-answer">(.*?)</p>', shown.text, re.S)
            assert answer is not None and "535" in answer.group(1), shown.text
            assert "535" not in saved.headers["location"]
            again = await c.get(saved.headers["location"])
            assert 'id="save-answer"' not in again.text
            assert s.daemon.config.provider("later").username == "relay"
            # The form of a provider a route names says so.
            edit = await c.get("/providers/up1/edit")
            assert 'id="routes-note"' in edit.text and "Routes 1 " in edit.text
    finally:
        await guarded.stop()


async def test_edit_the_daily_rate_then_disable_the_last_is_refused(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream, daily_limit=100)]) as s, app_client(s) as c:
        before = await annotate(s)
        page = await c.get("/providers/up1/edit")
        form = form_of(page.text)
        assert form["daily_limit"] == "100"
        form["daily_limit"] = "2500"
        saved = await c.post("/providers/up1/edit", data=form)
        assert saved.status_code == 303, saved.text
        after = s.config_path.read_text()
        changed = [
            (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
        ]
        assert changed == [("  daily_limit: 100", "  daily_limit: 2500")]
        assert s.daemon.config.provider("up1").daily_limit == 2500
        # The only enabled provider cannot be disabled: the page says why, the file stays.
        token = csrf_of(page.text)
        refused = await c.post(
            "/providers/up1/disable", data={"csrf_token": token, "base_digest": ""}
        )
        assert refused.status_code == 422
        assert "only enabled provider" in refused.text
        assert s.config_path.read_text() == after
        api = await c.patch("/api/providers/up1", headers=await csrf(c), json={"enabled": False})
        assert api.status_code == 422
        assert "only enabled provider" in api.json()["errors"]["enabled"]
        # A bad value: the rule of `sluice check`, in words, beside its field.
        form = form_of((await c.get("/providers/up1/edit")).text)
        form["port"] = "99999"
        bad = await c.post("/providers/up1/edit", data=form)
        assert bad.status_code == 422
        assert "65535" in field_error(bad.text, "port")
        assert "providers.0" not in field_error(bad.text, "port")
        r = await c.patch("/api/providers/up1", headers=await csrf(c), json={"port": 0})
        assert r.status_code == 422 and "port" in r.json()["errors"]


async def test_a_hand_edit_not_reloaded_and_a_concurrent_save_are_refused(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream, daily_limit=100)]) as s, app_client(s) as c:
        await annotate(s)
        form_a = form_of((await c.get("/providers/up1/edit")).text)
        form_b = dict(form_a)
        # Two sessions save from the same file: the first wins, the second is told.
        form_a["daily_limit"], form_b["daily_limit"] = "111", "222"
        first, second = await asyncio.gather(
            c.post("/providers/up1/edit", data=form_a), c.post("/providers/up1/edit", data=form_b)
        )
        codes = sorted([first.status_code, second.status_code])
        assert codes == [303, 409], (first.text, second.text)
        loser = second if second.status_code == 409 else first
        assert "changed on disk" in loser.text
        limit = s.daemon.config.provider("up1").daily_limit
        assert limit in (111, 222)
        assert load(s.config_path).provider("up1").daily_limit == limit
        # A hand edit not reloaded: Save refuses and shows the difference.
        text = s.config_path.read_text()
        s.config_path.write_text(text.replace("caption: ''", "caption: hand edit") + "# by hand\n")
        hand = s.config_path.read_text()
        page = await c.get("/providers/up1/edit")
        assert 'id="stale"' in page.text and "+# by hand" in page.text  # said before Save
        form = form_of(page.text)
        form["daily_limit"] = "333"
        stale = await c.post("/providers/up1/edit", data=form)
        assert stale.status_code == 409
        assert 'id="stale-diff"' in stale.text and "+# by hand" in stale.text
        assert s.config_path.read_text() == hand
        api = await c.patch("/api/providers/up1", headers=await csrf(c), json={"daily_limit": 333})
        assert api.status_code == 409 and "+# by hand" in api.json()["diff"]


async def test_delete_counts_the_queued_recipients_and_the_api_answers(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT"] = "451 4.3.0 try later"
    providers = [provider_for(upstream), provider_for(upstream, "spare", priority=200)]
    async with sluice(providers, retry={"first_delay": "1h", "max_delay": "2h"}) as s:
        async with app_client(s) as c:
            await annotate(s)
            rcpts = ["a@example.net", "b@example.net"]
            await smtp_send(s.port, "app@example.org", rcpts, b"Subject: q\r\n\r\nb\r\n")
            await s.wait_idle()
            # up1 deferred them, then spare (the failover) did: spare was the last.
            queued = await s.spool.list_queue()
            assert {e.provider for e in queued} == {"spare"}
            confirm = await c.get("/providers/spare/delete")
            assert confirm.status_code == 200
            assert "2 queued recipients" in confirm.text, confirm.text.split("<main>")[1]
            token = csrf_of(confirm.text)
            gone = await c.post(
                "/providers/spare/delete", data={"csrf_token": token, "confirmed": "yes"}
            )
            assert gone.status_code == 303
            assert [p.id for p in s.daemon.config.providers] == ["up1"]
            # The API: add (201), bad fields (422 with field -> message), delete the last (422).
            r = await c.post(
                "/api/providers",
                headers=await csrf(c),
                json={"id": "api1", "host": "", "port": "x", "password": TYPED},
            )
            assert r.status_code == 422, r.text
            errors = r.json()["errors"]
            assert "host" in errors and "port" in errors and TYPED not in r.text
            r = await c.post(
                "/api/providers",
                headers=await csrf(c),
                json={
                    "id": "api1",
                    "host": upstream.host,
                    "port": upstream.port,
                    "encryption": "none",
                    "timeout": "20s",
                    "save_anyway": True,
                },
            )
            assert r.status_code == 201, r.text
            assert r.json()["reloaded"] is True
            assert s.daemon.config.provider("api1").timeout == 20  # any key a provider has
            r = await c.delete("/api/providers/api1", headers=await csrf(c))
            assert r.status_code == 200 and r.json()["queued_recipients"] == 0
            r = await c.delete("/api/providers/up1", headers=await csrf(c))
            assert r.status_code == 422 and "only enabled provider" in r.text
            audit = [a.detail for a in await s.spool.audit_log(limit=20)]
            assert any("removed" in d for d in audit)


async def test_edits_need_a_login_and_the_sessions_csrf_token(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s, password="pw") as c:
        before = s.config_path.read_text()
        assert (await c.get("/providers/new")).status_code == 303  # to the login page
        r = await c.post("/api/providers", json={"id": "x", "host": "h"})
        assert r.status_code == 401
        await login(c, "admin", "pw")
        form = form_of((await c.get("/providers/up1/edit")).text)
        form["daily_limit"] = "7"
        for forged in (
            {**form, "csrf_token": "forged"},
            {k: v for k, v in form.items() if k != "csrf_token"},
        ):
            assert (await c.post("/providers/up1/edit", data=forged)).status_code == 403
        for path in ("/providers/up1/disable", "/providers/up1/delete", "/settings/bounces"):
            r = await c.post(path, data={"confirmed": "yes", "threshold": "9"})
            assert r.status_code == 403
        r = await c.patch("/api/providers/up1", json={"daily_limit": 7})
        assert r.status_code == 403
        assert s.config_path.read_text() == before
        assert (await c.post("/providers/up1/edit", data=form)).status_code == 303
        actor = (await s.spool.audit_log(limit=1))[0].actor
        assert "admin" in actor


async def test_with_config_edits_off_no_form_is_served_and_the_api_answers_403(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)], admin={"config_edits": False}) as s:
        async with app_client(s, config_edits=False) as c:
            before = s.config_path.read_text()
            providers = await c.get("/providers")
            assert 'href="/providers/new"' not in providers.text
            assert "admin.config_edits: false" in providers.text
            page = await c.get("/providers/up1")
            assert 'id="edit-button"' not in page.text and 'id="edits-off"' in page.text
            for url in ("/providers/new", "/providers/up1/edit", "/providers/up1/delete"):
                r = await c.get(url)
                assert r.status_code == 403 and "<form" not in r.text.split("<main>")[1]
            r = await c.post("/api/providers", headers=await csrf(c), json={"id": "x", "host": "h"})
            assert r.status_code == 403 and "config_edits" in r.json()["errors"][""]
            r = await c.put("/api/settings/bounces", headers=await csrf(c), json={"threshold": 5})
            assert r.status_code == 403
            assert s.config_path.read_text() == before


async def test_the_bounce_settings_api_checks_the_mailbox_first(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with dovecot({"bounces": TYPED}) as imap:
        await asyncio.to_thread(make_folder, imap.port, "Bounces")
        async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
            before = await annotate(s)
            body = {
                "address": "bounces@example.org",
                "threshold": 2,
                "suppress_scope": "stream",
                "mailbox": {
                    "host": "127.0.0.1",
                    "port": imap.port,
                    "encryption": "none",
                    "username": "bounces",
                    "password": WRONG,
                    "folder": "Bounces",
                },
            }
            r = await c.put("/api/settings/bounces", headers=await csrf(c), json=body)
            assert r.status_code == 422
            assert "login" in r.json()["errors"]["mailbox.password"]
            assert WRONG not in r.text and s.config_path.read_text() == before
            # Retrieve folders with the values typed (no script: the form posts, the page lists).
            form = form_of((await c.get("/settings/bounces")).text)
            form.update(
                {
                    "mailbox.host": "127.0.0.1",
                    "mailbox.port": str(imap.port),
                    "mailbox.encryption": "none",
                    "mailbox.username": "bounces",
                    "mailbox.password": TYPED,
                }
            )
            listed = await c.post("/settings/bounces/folders", data=form)
            assert listed.status_code == 200
            assert '<option value="Bounces"' in listed.text and TYPED not in listed.text
            assert "type it again to save" in listed.text
            api = await c.post(
                "/api/settings/bounces/folders",
                headers=await csrf(c),
                json={**form, "mailbox.password": WRONG},
            )
            assert api.status_code == 502 and "login as bounces failed" in api.json()["error"]
            body["mailbox"]["folder"] = "Nowhere"  # type: ignore[index]
            body["mailbox"]["password"] = TYPED  # type: ignore[index]
            r = await c.put("/api/settings/bounces", headers=await csrf(c), json=body)
            assert r.status_code == 422
            assert "Nowhere" in r.json()["errors"]["mailbox.folder"]
            body["mailbox"]["folder"] = "Bounces"  # type: ignore[index]
            r = await c.put("/api/settings/bounces", headers=await csrf(c), json=body)
            assert r.status_code == 200, r.text
            assert TYPED not in r.text and "mailbox.password" in r.json()["changed"]
            bounces = s.daemon.config.bounces
            assert bounces.mailbox is not None and bounces.mailbox.folder == "Bounces"
            assert bounces.threshold == 2 and bounces.suppress_scope == "stream"
            got = (await c.get("/api/settings/bounces")).json()
            assert got["values"]["mailbox.folder"] == "Bounces" and got["values"]["threshold"] == 2
            assert got["secrets"]["mailbox.password"].startswith("saved")
            assert TYPED not in json.dumps(got) and "mailbox.password_file" not in got["values"]
            # The page shows it, the password as saved, never its value.
            page = await c.get("/settings/bounces")
            assert 'value="Bounces"' in page.text and "saved (leave empty to keep it)" in page.text
            assert TYPED not in page.text and TYPED not in s.config_path.read_text()
            # The saved password goes to no other server: not to list folders, not to save.
            elsewhere = {**form, "mailbox.host": "localhost", "mailbox.password": ""}
            api = await c.post(
                "/api/settings/bounces/folders", headers=await csrf(c), json=elsewhere
            )
            assert api.status_code == 502 and "type the mailbox password" in api.json()["error"]
            r = await c.put(
                "/api/settings/bounces",
                headers=await csrf(c),
                json={"mailbox": {"host": "localhost"}},
            )
            assert r.status_code == 422 and "again" in r.json()["errors"]["mailbox.password"]


def make_folder(port: int, name: str) -> None:
    with imapclient.IMAPClient("127.0.0.1", port=port, ssl=False) as c:
        c.login("bounces", TYPED)
        c.create_folder(name)
