"""'Retrieve folders' on the overview's bounce mailbox card and ``GET /api/bounces/folders``.

Against a real Dovecot on loopback (``tests.bounces.mailhost``), through the
admin app over the backend the running daemon hands its own admin; only the
HTTP hop is in-process.
"""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from typing import Any

import imapclient
import pytest
from playwright.async_api import Browser, expect

from tests.admin.conftest import AppClientFactory
from tests.admin.test_browser import browser  # noqa: F401  (the Chromium fixture)
from tests.bounces.mailhost import Dovecot, dovecot
from tests.conftest import SluiceFactory, provider_for
from tests.upstream import TestUpstream

pytestmark = pytest.mark.slow

PASSWORD = "f0lders-pw"
#: a folder name only a hostile (or odd) mail server would send: shown as text, never markup
ODD = "<b>odd & co"


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def box_for(server: Dovecot | None, **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": server.port if server is not None else 1,
        "encryption": "none",
        "username": "bounces",
        "password": PASSWORD,
        # The daemon's own poller stays out of the way of what is tested here.
        "poll_interval": "1h",
        "timeout": "5s",
        **extra,
    }


async def create_folders(server: Dovecot, *names: str) -> None:
    def make() -> None:
        with imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False) as c:
            c.login("bounces", PASSWORD)
            for name in names:
                c.create_folder(name)

    await asyncio.to_thread(make)


def listed(page: str) -> list[tuple[str, str]]:
    """The folder list on the card: (class attribute, text) per item."""
    (block,) = re.findall(r'<ul class="folders">(.*?)</ul>', page, re.S)
    return [(cls, text) for cls, text in re.findall(r'<li(?: class="(\w+)")?>([^<]*)', block)]


async def test_the_folders_are_listed_with_the_configured_one_marked(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with dovecot({"bounces": PASSWORD}) as imap:
        await create_folders(imap, "Bounces", ODD)
        box = box_for(imap, folder="Bounces")
        async with sluice([provider_for(upstream)], bounces={"mailbox": box}) as s:
            async with app_client(s) as c:
                r = await c.get("/api/bounces/folders")
                assert r.status_code == 200
                assert r.json() == {
                    "folders": sorted(["INBOX", "Bounces", ODD]),
                    "configured": "Bounces",
                }

                overview = (await c.get("/")).text
                assert "Retrieve folders" in overview and 'action="/bounces/folders"' in overview
                page = await c.post("/bounces/folders", data={"csrf_token": csrf_of(overview)})
                assert page.status_code == 200
                assert listed(page.text) == [
                    ("", html.escape(ODD)),
                    ("configured", "Bounces "),
                    ("", "INBOX"),
                ]
                # The server's names are text: escaped, never markup.
                assert ODD not in page.text
                assert "is not among them" not in page.text

        # A configured folder the server does not have is pointed out.
        box = box_for(imap, folder="Missing")
        async with sluice([provider_for(upstream)], bounces={"mailbox": box}) as s:
            async with app_client(s) as c:
                data = (await c.get("/api/bounces/folders")).json()
                assert data["configured"] == "Missing" and "Missing" not in data["folders"]
                token = csrf_of((await c.get("/")).text)
                text = (await c.post("/bounces/folders", data={"csrf_token": token})).text
                assert "configured" not in dict(listed(text))
                assert "Missing is not among them" in text


async def test_an_unreachable_or_refusing_server_shows_the_error(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    # Nothing listens on port 1.
    async with sluice([provider_for(upstream)], bounces={"mailbox": box_for(None)}) as s:
        async with app_client(s) as c:
            r = await c.get("/api/bounces/folders")
            assert r.status_code == 502
            assert r.json()["error"].startswith("cannot connect to 127.0.0.1:1:")
            token = csrf_of((await c.get("/")).text)
            page = await c.post("/bounces/folders", data={"csrf_token": token})
            assert page.status_code == 502
            assert '<p class="error" role="alert">cannot connect to 127.0.0.1:1:' in page.text
            assert '<ul class="folders">' not in page.text

    # A real server refusing the login: the error names the user, escaped.
    async with dovecot({"bounces": PASSWORD}) as imap:
        box = box_for(imap, username="<script>x</script>")
        async with sluice([provider_for(upstream)], bounces={"mailbox": box}) as s:
            async with app_client(s) as c:
                r = await c.get("/api/bounces/folders")
                assert r.status_code == 502
                assert "127.0.0.1: login as <script>x</script> failed: " in r.json()["error"]
                token = csrf_of((await c.get("/")).text)
                page = await c.post("/bounces/folders", data={"csrf_token": token})
                # The reason after the colon may differ from the first answer: Dovecot
                # slows down repeated failed logins (its auth penalty), so it may time out.
                assert page.status_code == 502
                assert (
                    '<p class="error" role="alert">127.0.0.1: login as '
                    "&lt;script&gt;x&lt;/script&gt; failed: " in page.text
                )
                assert "<script>x</script>" not in page.text


async def test_no_mailbox_configured(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        r = await c.get("/api/bounces/folders")
        assert r.status_code == 404
        assert r.json() == {"error": "no bounce mailbox is configured (bounces.mailbox)"}
        overview = (await c.get("/")).text
        assert "Retrieve folders" not in overview
        page = await c.post("/bounces/folders", data={"csrf_token": csrf_of(overview)})
        assert page.status_code == 404
        assert "no bounce mailbox is configured (bounces.mailbox)" in page.text


async def test_same_auth_and_csrf_as_the_rest(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    app_client: AppClientFactory,
    tmp_path: Path,
) -> None:
    async with dovecot({"bounces": PASSWORD}) as imap:
        async with sluice([provider_for(upstream)], bounces={"mailbox": box_for(imap)}) as s:
            # A browser session (the cookie): the form without its token is refused.
            async with app_client(s) as c:
                token = csrf_of((await c.get("/")).text)
                refused = await c.post("/bounces/folders")
                assert refused.status_code == 403
                assert "INBOX" not in refused.text
                wrong = await c.post("/bounces/folders", data={"csrf_token": token + "x"})
                assert wrong.status_code == 403
                ok = await c.post("/bounces/folders", data={"csrf_token": token})
                assert ok.status_code == 200 and ("configured", "INBOX ") in listed(ok.text)

            # With a password: nothing without logging in.
            (tmp_path / "pw").write_text("right-pw\n")
            async with app_client(s, password_file=tmp_path / "pw") as c:
                r = await c.get("/api/bounces/folders")
                assert r.status_code == 401 and "INBOX" not in r.text
                r = await c.post("/bounces/folders")
                assert r.status_code == 303
                assert r.headers["location"] == "/login?next=%2Fbounces%2Ffolders"


@pytest.mark.browser
async def test_the_button_in_a_browser_fills_the_card(
    browser: Browser,  # noqa: F811  (the fixture imported above)
    sluice: SluiceFactory,
    upstream: TestUpstream,
) -> None:
    """With script the button asks the JSON API and lists the folders in the card, as text."""
    async with dovecot({"bounces": PASSWORD}) as imap:
        await create_folders(imap, "Bounces", ODD)
        admin = {"enabled": True, "listen": "127.0.0.1:0"}  # open on loopback: no login here
        box = box_for(imap, folder="Bounces")
        async with sluice([provider_for(upstream)], admin=admin, bounces={"mailbox": box}) as s:
            assert s.daemon.admin is not None
            context = await browser.new_context()
            page = await context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(f"http://127.0.0.1:{s.daemon.admin.address.port}/")
            card = page.locator("#bounce-mailbox")
            await card.get_by_role("button", name="Retrieve folders").click()
            items = card.locator("ul.folders li")
            await expect(items).to_have_text(
                [ODD, "Bounces ✔ configured (bounces.mailbox.folder)", "INBOX"]
            )
            await expect(card.locator("li.configured")).to_have_count(1)
            # The JSON path, not a form post: still the overview's own URL.
            assert page.url.endswith("/")
            assert await card.locator(".folder-result b").count() == 0
            assert errors == [], errors
            await context.close()
