"""The admin page in headless Chromium (Debian's), against a real Sluice and real upstreams.

Playwright's async API in our own fixture: pytest-playwright's sync fixtures
leave a loop running that breaks the asyncio tests after them. Screenshots of
every page go to ``tests/artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright._impl._api_structures import SetCookieParam
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from relay.store.spool import Spool
from relay.store.suppressions import NewBounce, Threshold
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
XSS = "<script>alert(1)</script>"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        message = "Debian's chromium is not installed (bash .ci/install-system-deps, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: its absence is a broken set-up
        pytest.skip(message)  # an unprivileged developer machine
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            await b.close()


def mail(subject: str) -> bytes:
    return f"From: app@example.org\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_operator_journey(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    upstream.reply["RCPT:later@example.net"] = "451 4.2.0 try later"
    upstream.reply["RCPT:bad@example.net"] = "550 5.1.1 no such user"
    guarded = await TestUpstream(users={"relay": "right"}).start()
    (tmp_path / "pw").write_text("admin-pw\n")
    providers = [
        provider_for(upstream, caption="Primary relay", send_from="app@example.org"),
        provider_for(
            guarded,
            "locked",
            caption="Relay with a wrong password",
            username="relay",
            password="wrong",
            allow_insecure_auth=True,
            enabled=False,
        ),
    ]
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    retry = {"first_delay": "1h", "max_delay": "2h"}
    try:
        async with sluice(providers, admin=admin, retry=retry) as s:
            assert s.daemon.admin is not None
            base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
            await smtp_send(s.port, "app@example.org", ["later@example.net"], mail(XSS))
            await smtp_send(s.port, "app@example.org", ["bad@example.net"], mail("bounces"))
            await smtp_send(s.port, "app@example.org", ["ok@example.net"], mail("arrives"))

            async def deferred_once() -> bool:
                rows = await s.spool.list_queue(search="later@")
                return bool(rows) and rows[0].attempts == 1 and rows[0].status == "deferred"

            await eventually(deferred_once)
            await smtp_send(s.port, "app@example.org", ["gone@example.net"], mail("bounces later"))
            await smtp_send(
                s.port, "team@example.org", ["r1@example.net", "r2@example.net"], mail("two")
            )
            await s.wait_idle()
            (gone,) = await s.spool.list_queue(search="gone@")
            # The DSN that comes back after the provider took it (what the poller records).
            await s.spool.suppressions.record_bounce(
                NewBounce(
                    address="gone@example.net",
                    kind="hard",
                    source="dsn",
                    status="5.1.1",
                    diagnostic="smtp; 550 5.1.1 user unknown",
                    queue_id=gone.queue_id,
                    key="journey-dsn",
                ),
                Threshold(hard=5),
            )

            context = await browser.new_context(
                viewport={"width": 1366, "height": 900}, timezone_id="America/Los_Angeles"
            )
            page = await context.new_page()
            alerts: list[str] = []

            async def on_dialog(dialog: Dialog) -> None:
                if dialog.type == "confirm":
                    await dialog.accept()  # our own "Delete the selected messages?"
                else:
                    alerts.append(f"{dialog.type}: {dialog.message}")
                    await dialog.dismiss()

            page.on("dialog", on_dialog)
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None,
            )

            # Log in.
            await page.goto(base + "/queue")
            await expect(page).to_have_url(base + "/login?next=%2Fqueue")
            await page.fill("input[name=password]", "admin-pw")
            await shot(page, "01-login")
            await page.click("button[type=submit]")
            await expect(page).to_have_url(base + "/queue")

            # Queue: the deferred message with its attempt and reason; the XSS as text.
            row = page.locator("tr", has_text="later@example.net")
            await expect(row).to_contain_text("451 4.2.0 try later")
            await expect(row.locator("td.num")).to_have_text("1")
            await expect(row.get_by_text(XSS, exact=True)).to_be_visible()
            await expect(row.locator("time[data-rel] .rel").last).to_contain_text("in ")
            # After the script ran, times still read as the CLI and the log write them.
            await expect(row.locator("time[data-ts]").first).to_contain_text(" UTC")
            # Who sent it, when it came in (in UTC) and the provider that answered.
            await expect(row.locator("td.sender")).to_have_text("app@example.org")
            await expect(row.locator("td.received time")).to_contain_text(" UTC")
            await expect(row.locator("td.provider")).to_have_text("up1")
            # Sent, then a bounce came back: the queue says bounced, with the report.
            bounced = page.locator("tr", has_text="gone@example.net")
            await expect(bounced.locator(".badge")).to_have_text("bounced")
            await expect(bounced.locator("td.reason")).to_contain_text("5.1.1 user unknown")
            await expect(
                page.locator("tr", has_text="ok@example.net").locator(".badge")
            ).to_have_text("sent")
            # A row's checkbox is its whole message (the actions take queue IDs): ticking
            # one recipient's row ticks its message's other row, and says so.
            r1 = page.locator("tr", has_text="r1@example.net").locator("input[name=queue_id]")
            r2 = page.locator("tr", has_text="r2@example.net").locator("input[name=queue_id]")
            await expect(r1).to_have_attribute("aria-label", re.compile(r"\(2 recipients\)$"))
            await r1.check()
            await expect(r2).to_be_checked()
            await expect(page.locator("#selected-count")).to_have_text(
                "Selected: 1 message (2 recipients)"
            )
            await r2.uncheck()
            await expect(r1).not_to_be_checked()
            await expect(page.locator("#selected-count")).to_have_text("Selected: 0")
            await shot(page, "02-queue")

            # Retry now: another attempt happens at once (the upstream still defers).
            await row.locator("input[name=queue_id]").check()
            await page.locator("#queue-form .actions").first.get_by_text("Retry now").click()
            await expect(page.locator("#notice")).to_have_text("1 message made due now.")

            async def tried_twice() -> bool:
                rows = await s.spool.list_queue(search="later@")
                return rows[0].attempts == 2 and rows[0].status == "deferred"

            await eventually(tried_twice)
            await page.reload()
            await expect(row.locator("td.num")).to_have_text("2")

            # The message page: envelope, attempts with the upstream's reply, raw download.
            await row.get_by_role("link").click()
            await expect(page.locator("h1")).to_contain_text("Message")
            await expect(page.locator("dd.subject")).to_have_text(XSS)
            await expect(page.locator("table", has_text="Reply")).to_contain_text("451")
            async with page.expect_download() as info:
                await page.get_by_text("Download .eml").click()
            download = await info.value
            saved = tmp_path / "got.eml"
            await download.save_as(saved)
            (entry,) = await s.spool.list_queue(search="later@")
            assert saved.read_bytes() == await s.spool.raw(entry.queue_id)
            await shot(page, "03-message")

            # Delete it from the queue page.
            await page.goto(base + "/queue")
            await row.locator("input[name=queue_id]").check()
            await page.locator("#queue-form .actions").first.get_by_text("Delete").click()
            await expect(page.locator("#notice")).to_have_text("1 message deleted.")
            await expect(page.locator("tr", has_text="later@example.net")).to_have_count(0)
            assert await s.spool.list_queue(search="later@") == []

            # The log: SUCCESS and FAIL rows with reasons.
            await page.goto(base + "/log")
            await expect(page.locator("tr", has_text="ok@example.net").first).to_contain_text(
                "SUCCESS"
            )
            fail = page.locator("tr", has_text="bad@example.net")
            await expect(fail).to_contain_text("FAIL")
            await expect(fail).to_contain_text("no such user")
            await page.get_by_label("FAIL").check()
            await page.get_by_role("button", name="Filter").click()
            await expect(page.locator("tbody tr")).to_have_count(1)
            # A day in the viewer's zone (the page sends its UTC offset along).
            today = await page.evaluate(
                "() => { const d = new Date(), p = (n) => String(n).padStart(2, '0');"
                " return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`; }"
            )
            await page.fill("input[name=date]", today)
            await page.get_by_role("button", name="Filter").click()
            await expect(page.locator("tbody tr")).to_have_count(1)
            assert "tz=480" in page.url or "tz=420" in page.url  # Los Angeles, PST or PDT
            await shot(page, "04-log")
            await page.fill("input[name=date]", "2001-01-01")
            await page.get_by_role("button", name="Filter").click()
            await expect(page.locator("td.empty")).to_have_text("Nothing here.")

            # Overview and providers.
            await page.goto(base + "/")
            await expect(page.locator("svg.chart rect.bar").first).to_be_visible()
            # The cards count recipients, the table attempts: each says which.
            await expect(page.locator("#recipients-heading")).to_contain_text("Recipients")
            await expect(page.locator("#deliveries h2")).to_have_text("Delivery attempts")
            await expect(page.locator("#deliveries")).to_contain_text(
                "cards above count recipients"
            )
            await shot(page, "05-overview")
            await page.goto(base + "/providers")
            await expect(page.locator("tr", has_text="Primary relay")).to_contain_text(
                "app@example.org"
            )
            await shot(page, "06-providers")

            # Test connection: green, then red with the failing step and the reply.
            await page.goto(base + "/providers/up1")
            await page.click("#test-button")
            await expect(page.locator("#test-report")).to_contain_text("Connection works")
            await expect(page.locator("#test-report")).to_have_class("card report good")
            await shot(page, "07-provider-test-ok")
            await page.goto(base + "/providers/locked")
            await expect(page.locator("dd.secret")).to_have_text("••••••")
            await page.click("#test-button")
            report = page.locator("#test-report")
            await expect(report).to_contain_text("Connection test failed")
            await expect(report.locator("li.bad")).to_contain_text("AUTH")
            await expect(report.locator("li.bad")).to_contain_text("535")
            await shot(page, "08-provider-test-failed")

            # Auto-refresh: the page reloads itself, so a queue can be watched draining.
            async with page.expect_navigation(timeout=10_000):
                await page.select_option("#autorefresh", "5")
            await expect(page.locator("#autorefresh")).to_have_value("5")  # remembered
            await page.select_option("#autorefresh", "0")

            assert alerts == [], alerts
            assert errors == [], errors  # no CSP violation, no script error
            await context.close()
    finally:
        await guarded.stop()


async def test_login_logout_and_the_old_cookie(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """Log in, log out, and a copy of the cookie taken before logout no longer works."""
    (tmp_path / "pw").write_text("admin-pw\n")
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    async with sluice([provider_for(upstream)], admin=admin) as s:
        assert s.daemon.admin is not None
        base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
        context = await browser.new_context()
        page = await context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        # The wrong password below is answered 401, which Chromium logs as an error.
        expected = "the server responded with a status of 401 (Unauthorized)"

        # A wrong password first: the form says so and stays on the login page.
        await page.goto(base + "/providers")
        await expect(page).to_have_url(base + "/login?next=%2Fproviders")
        await page.fill("input[name=password]", "wrong")
        await page.click("button[type=submit]")
        await expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
        await page.fill("input[name=password]", "admin-pw")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(base + "/providers")
        await shot(page, "20-logged-in")

        (cookie,) = [c for c in await context.cookies() if c.get("name") == "sluice_session"]
        assert cookie.get("httpOnly") is True and cookie.get("sameSite") == "Strict"
        captured: SetCookieParam = {
            "name": "sluice_session",
            "value": cookie.get("value", ""),
            "url": base,
        }

        # A second browser holding a copy of the cookie (a stolen one) gets in...
        thief = await browser.new_context()
        await thief.add_cookies([captured])
        stolen = await thief.new_page()
        await stolen.goto(base + "/queue")
        await expect(stolen).to_have_url(base + "/queue")

        # ...until the operator logs out.
        await page.get_by_role("button", name="Log out admin").click()
        await expect(page).to_have_url(base + "/login")
        await shot(page, "21-logged-out")
        await page.goto(base + "/queue")
        await expect(page).to_have_url(base + "/login?next=%2Fqueue")

        # The old cookie, put back into a fresh browser, is refused.
        await thief.clear_cookies()
        await thief.add_cookies([captured])
        await stolen.goto(base + "/queue")
        await expect(stolen).to_have_url(base + "/login?next=%2Fqueue")
        await expect(stolen.get_by_role("button", name="Log out admin")).to_have_count(0)

        # Logging in again works.
        await page.fill("input[name=password]", "admin-pw")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(base + "/queue")
        assert [e for e in errors if expected not in e] == [], errors
        await thief.close()
        await context.close()


async def test_provider_list_test_connection_and_test_message(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """The seed's provider list: health colours, Test connection and Send test message."""
    guarded = await TestUpstream(users={"relay": "right"}).start()
    providers = [
        provider_for(upstream, caption="Primary relay", send_from="app@example.org"),
        provider_for(
            guarded,
            "locked",
            caption="Wrong password",
            username="relay",
            password="wrong",
            allow_insecure_auth=True,
            priority=9,
        ),
        provider_for(upstream, "spare", caption="Never used", enabled=False),
    ]
    admin = {"enabled": True, "listen": "127.0.0.1:0"}  # open on loopback: no login here
    retry = {"first_delay": "1h", "max_delay": "2h"}
    try:
        async with sluice(providers, admin=admin, retry=retry) as s:
            assert s.daemon.admin is not None
            base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
            # A real delivery each: up1 turns green, locked (its AUTH refused) red.
            await smtp_send(s.port, "app@example.org", ["ok@example.net"], mail("fine"))
            pinned = b"X-Sluice-Provider: locked\r\n" + mail("through locked")
            await smtp_send(s.port, "app@example.org", ["x@example.net"], pinned)

            async def both_tried() -> bool:
                health = {p.id: p.health for p in await s.daemon.snapshot().providers.status()}
                return health["up1"] == "ok" and health["locked"] == "error"

            await eventually(both_tried)
            await upstream.wait_for(1)

            context = await browser.new_context(viewport={"width": 1500, "height": 900})
            page = await context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None,
            )
            await page.goto(base + "/providers")
            colours = {
                "up1": "rgb(31, 138, 76)",  # green: ok
                "locked": "rgb(197, 48, 48)",  # red: error
                "spare": "rgb(154, 161, 171)",  # grey: unknown
            }
            for pid, colour in colours.items():
                dot = page.locator(f"tr[data-provider={pid}] .health")
                painted = await dot.evaluate(
                    "(el) => getComputedStyle(el, '::before').backgroundColor"
                )
                assert painted == colour, pid
            up1 = page.locator("tr[data-provider=up1]")
            await expect(up1).to_contain_text("app@example.org")
            await expect(page.locator("tr[data-provider=locked] td.secret")).to_have_text("••••••")

            # Test connection right in the list: a green check in the row.
            await up1.get_by_role("button", name="Test connection").click()
            await expect(up1.locator(".test-result")).to_have_text("✔ works")
            await expect(up1.locator(".test-result")).to_have_class("test-result good")
            locked = page.locator("tr[data-provider=locked]")
            await locked.get_by_role("button", name="Test connection").click()
            await expect(locked.locator(".test-result")).to_contain_text("✘ AUTH: 535")
            await shot(page, "09-providers-tested")

            # Send test message through up1 and watch the provider's final reply arrive.
            await page.select_option("select[name=provider]", "up1")
            await page.fill("input[name=to]", "operator@example.net")
            await page.click("#send-test-button")
            await expect(page).to_have_url(re.compile(r"/providers\?test_message=\w+#test-message"))
            card = page.locator("#test-message")
            await expect(card.locator(".tm-reply")).to_have_text("250 2.0.0 OK queued upstream")
            await expect(card.locator(".tm-status")).to_have_text("sent")
            await expect(card).to_have_attribute("data-settled", "yes")
            await shot(page, "10-test-message-sent")
            got = await upstream.wait_for(2)
            assert got[-1].recipients == ["operator@example.net"]
            assert b"Sluice test message via up1" in got[-1].data

            # Priority (lower is tried first), and pause / resume right in a row.
            await expect(page.locator("tr[data-provider=up1] td.priority")).to_have_text("100")
            await expect(page.locator("tr[data-provider=locked] td.priority")).to_have_text("9")
            spare = page.locator("tr[data-provider=spare]")
            await spare.locator("input[name=reason]").fill("planned work")
            await spare.locator(".pause-button").click()
            await expect(page.locator("#notice")).to_have_text(
                "Delivery paused; mail is still accepted."
            )
            await expect(spare).to_have_attribute("data-paused", "yes")
            await expect(spare.locator(".paused")).to_contain_text("paused")
            await expect(spare.locator(".pause-reason")).to_have_text("planned work")
            await expect(page.locator("tr[data-provider=up1] .pause-button")).to_be_visible()
            await shot(page, "11-provider-paused-in-list")
            await spare.get_by_role("button", name="Resume").click()
            await expect(page.locator("#notice")).to_have_text("Delivery resumed.")
            await expect(page).to_have_url(re.compile(r"/providers\?done=resume"))
            await expect(spare.locator(".pause-button")).to_be_visible()
            await expect(spare).not_to_have_attribute("data-paused", "yes")
            assert await s.spool.pauses() == {}

            assert errors == [], errors
            await context.close()
    finally:
        await guarded.stop()


async def test_suppressions_add_see_and_remove(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """The Suppressions page: add an address, find it, remove it (after the confirmation)."""
    (tmp_path / "pw").write_text("admin-pw\n")
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    async with sluice([provider_for(upstream)], admin=admin) as s:
        assert s.daemon.admin is not None
        base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        answers = iter([False, True])  # first "Cancel", then "OK"
        asked: list[str] = []

        async def on_dialog(dialog: Dialog) -> None:
            asked.append(dialog.message)
            if next(answers):
                await dialog.accept()
            else:
                await dialog.dismiss()

        page.on("dialog", on_dialog)
        errors: list[str] = []
        page.on(
            "console",
            lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None,
        )
        await page.goto(base + "/")
        await page.fill("input[name=password]", "admin-pw")
        await page.click("button[type=submit]")
        await page.get_by_role("link", name="Suppressions").click()
        await expect(page).to_have_url(base + "/suppressions")
        await expect(page.locator("#suppressions")).to_contain_text("No suppressed address")

        # Add one, with a hostile reason: it shows as text.
        form = page.locator("#add-suppression")
        await form.locator("input[name=address]").fill("Someone@Example.org")
        await form.locator("input[name=scope]").fill("news")
        await form.locator("input[name=reason]").fill(XSS)
        await form.locator("input[name=expires_in]").fill("30d")
        await form.get_by_role("button", name="Add").click()
        await expect(page.locator("#notice")).to_have_text("Address added to the suppression list.")
        row = page.locator("tr[data-address='someone@example.org']")
        await expect(row).to_contain_text("news")
        await expect(row.get_by_text(XSS, exact=True)).to_be_visible()
        await expect(row.locator(".badge")).to_have_text("manual")
        await shot(page, "30-suppression-added")
        (entry,) = await s.spool.suppressions.entries_of("someone@example.org")
        assert (entry.scope, entry.source, entry.reason) == ("news", "manual", XSS)

        # Its own page (each entry with its bounces).
        await row.get_by_role("link", name="someone@example.org").click()
        await expect(page.locator("h1")).to_have_text("someone@example.org")
        await expect(page.locator("#bounces")).to_contain_text("No bounce recorded")
        await page.go_back()

        # Remove: cancelled first (nothing happens), then confirmed.
        row = page.locator("tr[data-address='someone@example.org']")
        await row.get_by_role("button", name="Remove").click()
        await expect(row).to_be_visible()
        assert len(await s.spool.suppressions.entries_of("someone@example.org")) == 1
        await row.get_by_role("button", name="Remove").click()
        await expect(page.locator("#notice")).to_have_text("1 suppression entry removed.")
        await expect(page.locator("tr[data-address='someone@example.org']")).to_have_count(0)
        assert await s.spool.suppressions.entries_of("someone@example.org") == []
        assert len(asked) == 2 and asked[0].startswith("Remove someone@example.org (stream news)")

        # Import a CSV through the upload form (multipart, CSRF field read by the guard).
        upload = tmp_path / "list.csv"
        upload.write_text("address,scope,reason\nfrom-file@example.org,,old list\n")
        await page.locator("#import-suppressions input[type=file]").set_input_files(upload)
        await page.locator("#import-suppressions").get_by_role("button", name="Import").click()
        await expect(page.locator("#notice")).to_have_text("1 suppression entry imported.")
        imported = page.locator("tr[data-address='from-file@example.org']")
        await expect(imported.locator(".badge")).to_have_text("import")
        await shot(page, "31-suppression-imported")
        assert errors == [], errors
        await context.close()


async def test_webhooks_page_shows_failures_then_deliveries(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    from tests.webhook_receiver import WebhookReceiver

    rx = await WebhookReceiver(status=500).start()
    (tmp_path / "pw").write_text("admin-pw\n")
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    notify = {
        "webhooks": [{"url": rx.url, "secret": "page-test-secret", "events": ["sent"]}],
        "webhook_first_delay": "0.3s",
        "webhook_max_delay": "0.3s",
    }
    try:
        async with sluice([provider_for(upstream)], admin=admin, notify=notify) as s:
            assert s.daemon.admin is not None
            base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
            await smtp_send(s.port, "app@example.org", ["ok@example.net"], mail("hooked"))
            await rx.wait_for(lambda hits: len(hits) >= 1)
            (row,) = await s.spool.outbox_recent(rx.url)

            page = await (await browser.new_context()).new_page()
            await page.goto(base + "/webhooks")
            await page.fill("input[name=password]", "admin-pw")
            await page.click("button[type=submit]")
            await expect(page).to_have_url(base + "/webhooks")
            section = page.locator("section.webhook", has_text=rx.url)
            await expect(section).to_contain_text("Events: sent.")
            line = section.locator("tr", has_text=row.queue_id)
            await expect(line).to_contain_text("HTTP 500")
            await expect(line.locator(".badge")).to_have_text("failing")
            await shot(page, "20-webhooks-failing")

            rx.status = 200
            await rx.wait_for(lambda hits: any(h.status == 200 for h in hits))
            await eventually(lambda: _delivered(s.spool, rx.url))
            await page.reload()
            line = page.locator("section.webhook tr", has_text=row.queue_id)
            await expect(line.locator(".badge")).to_have_text("delivered")
            await expect(line).to_contain_text("HTTP 200")
            await expect(page.locator("section.webhook .counts")).to_contain_text(
                "0 waiting, 0 failing, 1 delivered."
            )
            await shot(page, "21-webhooks-delivered")
    finally:
        await rx.stop()


async def _delivered(spool: Spool, url: str) -> bool:
    return all(r.delivered_at is not None for r in await spool.outbox_recent(url))


async def test_hold_release_and_pause_journey(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """Hold a selection, release it, pause a provider with a reason, see it, resume."""
    (tmp_path / "pw").write_text("admin-pw\n")
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    upstream.reply["RCPT"] = "451 4.2.0 try later"
    retry = {"first_delay": "1h", "max_delay": "2h"}
    async with sluice([provider_for(upstream, "main")], admin=admin, retry=retry) as s:
        assert s.daemon.admin is not None
        base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
        for i in range(3):
            await smtp_send(s.port, "app@example.org", [f"r{i}@example.net"], mail(f"m{i}"))

        async def all_deferred() -> bool:
            rows = await s.spool.list_queue()
            return len(rows) == 3 and all(r.status == "deferred" for r in rows)

        await eventually(all_deferred)
        page = await (await browser.new_context(viewport={"width": 1366, "height": 900})).new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(base + "/queue")
        await page.fill("input[name=password]", "admin-pw")
        await page.click("button[type=submit]")
        await expect(page).to_have_url(base + "/queue")

        # Hold two of the three: a confirmation with the count first.
        rows = page.locator("tr[data-queue-id]")
        await expect(rows).to_have_count(3)
        chosen = [await rows.nth(i).get_attribute("data-queue-id") for i in (0, 1)]
        for qid in chosen:
            await page.check(f"input[name=queue_id][value='{qid}']")
        await page.click("#hold-selected")
        await expect(page.locator("#confirm-count")).to_contain_text(
            "Hold 2 recipients of 2 messages?"
        )
        await shot(page, "20-hold-confirm")
        await page.click("#confirm-button")
        await expect(page.locator("#notice")).to_have_text("2 recipients held.")
        for qid in chosen:
            await expect(page.locator(f"tr[data-queue-id='{qid}'] .badge")).to_have_text("held")
        await shot(page, "21-held")

        # Release them: due now (the upstream accepts by then).
        upstream.reply.clear()
        for qid in chosen:
            await page.check(f"input[name=queue_id][value='{qid}']")
        await page.click("#release-selected")
        await expect(page.locator("#confirm-count")).to_contain_text("Release 2 recipients")
        await page.click("#confirm-button")
        await expect(page.locator("#notice")).to_have_text("2 recipients released: due now.")
        got = await upstream.wait_for(2)
        assert sorted(r for m in got for r in m.recipients) == sorted(
            e.email for e in await s.spool.list_queue() if e.queue_id in chosen
        )

        # Pause the provider with a reason from its row on the provider list.
        await page.goto(base + "/providers")
        row = page.locator("tr[data-provider=main]")
        await row.locator("input[name=reason]").fill("provider incident")
        await row.locator("input[name=for]").fill("2h")
        await row.locator(".pause-button").click()
        await expect(page.locator("#notice")).to_have_text(
            "Delivery paused; mail is still accepted."
        )
        await expect(row.locator(".pause-reason")).to_have_text("provider incident")

        # The overview says so, and offers to resume.
        await page.goto(base + "/")
        banner = page.locator("#pauses .pause[data-provider=main]")
        await expect(banner).to_contain_text("provider incident")
        await expect(banner).to_contain_text("until")
        await shot(page, "22-paused-overview")
        await banner.locator("button").click()
        await expect(page.locator("#notice")).to_have_text("Delivery resumed.")
        await expect(page).to_have_url(base + "/?done=resume")
        await expect(page.locator("#pauses")).to_have_count(0)

        # Every action is on the Audit page, by the logged-in user.
        await page.goto(base + "/audit")
        actions = page.locator("#audit tbody tr")
        await expect(actions).to_have_count(4)
        await expect(actions.nth(0)).to_contain_text("resume")
        await expect(actions.nth(3)).to_contain_text("hold")
        await expect(actions.nth(3)).to_contain_text("admin")
        await shot(page, "23-audit")
        assert errors == []


#: What one page at phone width must hold to, measured in the page itself: the
#: document no wider than the viewport; every nav link inside the viewport, hit
#: at its centre (nothing drawn over it) and legible on what is painted under it
#: (the colour of the first opaque box at that point: a link that overflowed the
#: dark header would sit on the light page); every control outside a table's
#: own scroll box within the screen; every date in UTC (relay.wording.when).
PHONE_CHECK = """() => {
  const lum = (rgb) => {
    const [r, g, b] = rgb.match(/[\\d.]+/g).slice(0, 3).map((v) => {
      const c = Number(v) / 255;
      return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const opaque = (c) => c && c !== "transparent" && !/rgba\\(.*,\\s*0\\)$/.test(c);
  const width = Math.min(window.innerWidth, 390), height = window.innerHeight;
  const problems = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > width) problems.push(`document ${doc.scrollWidth} px wide`);
  for (const a of document.querySelectorAll("header.top nav a")) {
    const r = a.getBoundingClientRect();
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    const name = a.textContent.trim();
    if (r.width === 0 || r.left < 0 || r.right > width || r.top < 0 || r.bottom > height) {
      problems.push(`nav ${name} outside the viewport (${r.left}-${r.right})`);
      continue;
    }
    const hit = document.elementFromPoint(x, y);
    if (!hit || !(hit === a || a.contains(hit))) problems.push(`nav ${name} covered`);
    const under = document.elementsFromPoint(x, y)
      .map((el) => getComputedStyle(el).backgroundColor).find(opaque) || "rgb(255, 255, 255)";
    const [l1, l2] = [lum(getComputedStyle(a).color), lum(under)].sort((p, q) => q - p);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    if (ratio < 4.5) problems.push(`nav ${name} contrast ${ratio.toFixed(2)} on ${under}`);
  }
  for (const el of document.querySelectorAll("button, a.button, input, select, textarea")) {
    if (el.closest(".scroll") || el.type === "hidden") continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) continue;  // in a closed <details>
    if (r.left < 0 || r.right > width + 0.5) {
      problems.push(`${el.tagName} ${el.name || el.textContent.trim()} at ${r.left}-${r.right}`);
    }
  }
  for (const t of document.querySelectorAll("time[data-ts]")) {
    if (!t.firstChild.textContent.trim().endsWith(" UTC")) problems.push(`time ${t.textContent}`);
  }
  return problems;
}"""


async def test_every_page_at_phone_width(
    browser: Browser, sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    """Each page at 390×844 (a phone): no sideways scroll, a usable nav, buttons on screen."""
    from tests.webhook_receiver import WebhookReceiver

    rx = await WebhookReceiver().start()
    long_reply = "451 4.2.0 " + "mailbox-temporarily-unavailable-" * 6 + " try later"
    upstream.reply["RCPT:later@example.net"] = long_reply
    (tmp_path / "pw").write_text("admin-pw\n")
    admin = {"enabled": True, "listen": "127.0.0.1:0", "password_file": str(tmp_path / "pw")}
    notify = {"webhooks": [{"url": rx.url, "secret": "phone-test-secret", "events": ["sent"]}]}
    providers = [
        provider_for(upstream, caption="Primary relay", send_from="app@example.org"),
        provider_for(upstream, "spare", caption="Backup relay", priority=200),
    ]
    retry = {"first_delay": "1h", "max_delay": "2h"}
    try:
        async with sluice(providers, admin=admin, notify=notify, retry=retry) as s:
            assert s.daemon.admin is not None
            base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
            subject = "A subject long enough to need more than one line " * 3
            await smtp_send(
                s.port,
                "a-rather-long-sender-address@example.org",
                ["later@example.net", "ok@example.net"],
                mail(subject),
            )
            await s.wait_idle()
            (entry, *_) = await s.spool.list_queue(search="later@")
            await s.spool.suppressions.record_bounce(
                NewBounce(
                    address="gone-for-good-with-a-long-name@example.net",
                    kind="hard",
                    source="dsn",
                    status="5.1.1",
                    diagnostic="smtp; 550 5.1.1 " + "user-unknown-" * 10,
                    key="phone-1",
                ),
                Threshold(hard=1),
            )
            await rx.wait_for(lambda hits: len(hits) >= 1)

            # Not is_mobile: a mobile viewport zooms out to fit a too-wide page, and
            # window.innerWidth grows with it, hiding the very overflow looked for.
            context = await browser.new_context(viewport={"width": 390, "height": 844})
            page = await context.new_page()
            errors: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"{m.text} {m.location}") if m.type == "error" else None,
            )

            async def check(name: str) -> None:
                await page.wait_for_load_state("load")
                problems = await page.evaluate(PHONE_CHECK)
                await shot(page, f"40-phone-{name}")
                assert problems == [], (name, problems)

            await page.goto(base + "/")
            await check("login")
            await page.fill("input[name=password]", "admin-pw")
            await page.click("button[type=submit]")
            await expect(page).to_have_url(base + "/")
            await check("overview")

            # Every page of the nav, reached by clicking its link (clickable, not only visible).
            nav = page.locator("header.top nav a")
            names = await nav.all_inner_texts()
            assert len(names) == 8, names  # DKIM (#26)
            for name in names:
                await page.locator("header.top nav").get_by_role("link", name=name).click()
                await expect(page.locator("header.top nav a[aria-current=page]")).to_have_text(name)
                await check(name.lower())

            # The pages below the nav: a provider, a message (its Delete on screen), an address.
            for path, name in (
                ("/providers/spare", "provider"),
                (f"/messages/{entry.queue_id}", "message"),
                ("/suppressions/gone-for-good-with-a-long-name@example.net", "suppression"),
            ):
                await page.goto(base + path)
                await check(name)
            await page.goto(base + f"/messages/{entry.queue_id}")
            delete = page.get_by_role("button", name="Delete")
            await expect(delete).to_be_in_viewport()

            # The queue's key columns (who, what state, why) are on screen without scrolling.
            await page.goto(base + "/queue")
            row = page.locator("tr", has_text="later@example.net")
            for cell in ("td.email", "td.status"):
                box = await row.locator(cell).bounding_box()
                assert box is not None and 0 <= box["x"] and box["x"] + box["width"] <= 390, cell
            assert errors == [], errors
            await context.close()
    finally:
        await rx.stop()
