"""Configure on the page, in Debian's chromium: providers and the bounce mailbox, end to end.

One journey over one Sluice, one private Postfix with Dovecot SASL (the
provider being added) and one private Dovecot (the bounce mailbox), as an
operator who never opened the YAML would go: a preset, a wrong password
refused beside its field, the right one saved (the file keeps every comment;
only the new block is added), a test message through it, the daily rate
edited (the file and ``sluice providers list`` show it), two sessions saving
at once (one is told), disable, the last enabled refused, delete with queued
mail counted; then the bounce mailbox: wrong password refused, folders
retrieved and one picked, threshold set, and a bounce in that folder read.
The typed passwords are looked for everywhere they must not be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path

import imapclient
import pytest
import trustme
import yaml
from playwright.async_api import Browser, Page, expect

from tests.admin.test_browser import browser, shot
from tests.admin.test_config_pages import annotate, only_added, secret_file
from tests.bounces.genuine import about
from tests.bounces.mailhost import Dovecot, dovecot
from tests.bounces.test_mailbox import fixture
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.peers import postfix_sasl
from tests.upstream import TestUpstream

pytestmark = [pytest.mark.browser, pytest.mark.slow]

__all__ = ["browser"]  # the fixture, shared with test_browser.py

#: what the operator types: distinctive, so that a grep finds every place it went
TYPED = "Typed-Relay-Pa55-k3Vq"
MAILBOX = "Typed-Imap-Pa55-w8Lr"
WRONG = "wrong-Pa55word"
#: the address the stored Gmail bounce sample reports as unknown
GONE = "nobody.here@gmail.com"


def _pem(ca: trustme.CA, tmp_path: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "postfix-cert.pem", tmp_path / "postfix-key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return chain, key


def _append(server: Dovecot, message: bytes, folder: str) -> None:
    with imapclient.IMAPClient("127.0.0.1", port=server.port, ssl=False) as c:
        c.login("bounces", MAILBOX)
        if not c.folder_exists(folder):
            c.create_folder(folder)
        c.append(folder, message)


def _read(path: Path) -> str:
    return path.read_text()


async def _field_error(page: Page, name: str) -> str:
    return await page.locator(f'.field[data-field="{name}"] .field-error').inner_text()


async def test_configure_providers_and_the_bounce_mailbox_on_the_page(
    browser: Browser,
    sluice: SluiceFactory,
    upstream: TestUpstream,
    ca: trustme.CA,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = {"enabled": True, "listen": "127.0.0.1:0"}
    retry = {"first_delay": "1h", "max_delay": "2h"}
    bounces = {"address": "bounces@example.org"}
    async with (
        postfix_sasl(*_pem(ca, tmp_path), {"relay": TYPED}) as pf,
        dovecot({"bounces": MAILBOX}) as imap,
        sluice([provider_for(upstream, "office")], admin=admin, retry=retry, bounces=bounces) as s,
    ):
        assert s.daemon.admin is not None
        base = f"http://127.0.0.1:{s.daemon.admin.address.port}"
        before = await annotate(s)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        pages: list[str] = []

        async def keep() -> None:
            pages.append(await page.content())

        # -- Add provider from the SendGrid preset, against the private Postfix.
        await page.goto(base + "/providers")
        await page.click("#add-provider")
        await expect(page.locator("#presets")).to_contain_text("checked 2026-11-30")
        await page.click('.preset[data-preset="sendgrid"] a')
        await expect(page.locator("#preset-note")).to_contain_text("SendGrid")
        await expect(page.locator("#f-host")).to_have_value("smtp.sendgrid.net")
        await expect(page.locator("#f-encryption")).to_have_value("starttls")
        await page.fill("#f-id", "relay1")
        await page.fill("#f-host", pf.host)
        await page.fill("#f-port", str(pf.port))
        await page.fill("#f-ca-file", str(ca_file))
        await page.fill("#f-username", "relay")
        await page.fill("#f-password", WRONG)
        await page.fill("#f-daily-limit", "500")
        await page.click("#save-button")
        # Refused with the server's answer beside the password field; nothing written.
        assert "535" in await _field_error(page, "password")
        assert await page.locator("#f-host").input_value() == pf.host
        assert await page.locator("#f-password").input_value() == ""
        await shot(page, "config-01-wrong-password")
        await keep()
        assert _read(s.config_path) == before
        # Retyped: saved, checked, reloaded.
        await page.fill("#f-password", TYPED)
        await page.click("#save-button")
        await expect(page.locator("#saved")).to_contain_text("✔ Saved")
        await shot(page, "config-02-saved")
        await keep()
        after = _read(s.config_path)
        added = only_added(before, after)  # every original line, comments too, in place
        assert added[0].endswith("- id: relay1") and not any("#" in a for a in added)
        block = yaml.safe_load(after)["providers"][-1]
        assert secret_file(block["password_file"]) == (TYPED, 0o600)

        # -- A test message through it (to the address the bounce sample names).
        await page.goto(base + "/providers")
        await page.select_option("#send-test select[name=provider]", "relay1")
        await page.fill("#send-test input[name=to]", GONE)
        await page.click("#send-test-button")
        await expect(page.locator("#test-message .tm-status")).to_contain_text(
            "sent", timeout=30_000
        )
        test_qid = (await page.locator("#test-message h2 a").inner_text()).strip()
        await eventually(lambda: "status=sent" in pf.postfix_log(), within=20)

        # -- Edit the daily rate: the file and `sluice providers list` show it.
        await page.goto(base + "/providers/relay1")
        await page.click("#edit-button")
        await page.fill("#f-daily-limit", "1234")
        await page.click("#save-button")
        await expect(page.locator("#saved")).to_be_visible()
        assert "daily_limit: 1234" in _read(s.config_path)
        rc, out, err = await run_cli("providers", "list", "-c", str(s.config_path))
        assert rc == 0, err
        assert "1234" in out

        # -- Two sessions save the same form: one wins, the other is told.
        other = await (await browser.new_context()).new_page()
        await page.goto(base + "/providers/relay1/edit")
        await other.goto(base + "/providers/relay1/edit")
        await page.fill("#f-daily-limit", "1500")
        await other.fill("#f-daily-limit", "1600")
        await page.click("#save-button")
        await expect(page.locator("#saved")).to_be_visible()
        await other.click("#save-button")
        await expect(other.locator("#form-errors")).to_contain_text("changed on disk")
        await shot(other, "config-03-concurrent-save-refused")
        assert "daily_limit: 1500" in _read(s.config_path)
        assert s.daemon.config.provider("relay1").daily_limit == 1500
        await other.context.close()

        # -- Disable it; the last enabled provider cannot be disabled.
        await page.goto(base + "/providers/relay1")
        await page.click("#disable-button")
        await expect(page.locator("#notice")).to_contain_text("disabled")
        assert not s.daemon.config.provider("relay1").enabled
        await page.goto(base + "/providers/office")
        await page.click("#disable-button")
        await expect(page.locator("#edit-error")).to_contain_text("only enabled provider")
        assert s.daemon.config.provider("office").enabled

        # -- Delete a provider with queued mail: the confirmation counts it.
        upstream.reply["RCPT"] = "451 4.3.0 try again later"
        await smtp_send(
            s.port,
            "app@example.org",
            ["w1@example.net", "w2@example.net"],
            b"Subject: w\r\n\r\nx\r\n",
        )
        await s.wait_idle()
        await page.goto(base + "/providers/relay1")
        await page.click("#enable-button")
        await expect(page.locator("#notice")).to_contain_text("enabled")
        await page.goto(base + "/providers/office")
        await page.click("#delete-button")
        await expect(page.locator("#removal-impact")).to_contain_text("2 queued recipients")
        await shot(page, "config-04-delete-confirmation")
        await page.click("#confirm-delete")
        await expect(page.locator("#notice")).to_contain_text("deleted")
        assert [p.id for p in s.daemon.config.providers] == ["relay1"]

        # -- The bounce mailbox, against the private Dovecot.
        await asyncio.to_thread(_append, imap, about(fixture("gmail.eml"), test_qid), "Bounces")
        await page.goto(base + "/")
        await page.click("#bounce-settings-link")
        await page.fill("#f-mailbox-host", "127.0.0.1")
        await page.fill("#f-mailbox-port", str(imap.port))
        await page.select_option("#f-mailbox-encryption", "none")
        await page.fill("#f-mailbox-username", "bounces")
        await page.fill("#f-mailbox-password", WRONG)
        await page.click("#save-button")
        assert "login" in await _field_error(page, "mailbox.password")
        await keep()
        await page.fill("#f-mailbox-password", MAILBOX)
        await page.click("#retrieve-folders")
        await expect(page.locator("#folder-result")).to_contain_text("folders on the server")
        await page.select_option("#folder-pick", "Bounces")
        assert await page.locator("#f-mailbox-folder").input_value() == "Bounces"
        # Listed by the page's script: the typed password is still in its field.
        assert await page.locator("#f-mailbox-password").input_value() == MAILBOX
        await page.fill("#f-threshold", "1")
        await page.select_option("#f-suppress-scope", "stream")
        await shot(page, "config-05-bounce-mailbox")
        await page.click("#save-button")
        await expect(page.locator("#notice")).to_contain_text("Saved")
        await keep()
        saved = yaml.safe_load(_read(s.config_path))["bounces"]
        assert saved["threshold"] == 1 and saved["suppress_scope"] == "stream"
        assert saved["mailbox"]["folder"] == "Bounces" and saved["mailbox"]["port"] == imap.port
        assert secret_file(saved["mailbox"]["password_file"]) == (MAILBOX, 0o600)
        # The poller reads the bounce in that folder: recorded against the test message.
        await eventually(lambda: s.spool.suppressions.bounces_of(GONE), within=30)
        (bounce,) = await s.spool.suppressions.bounces_of(GONE)
        assert bounce.queue_id == test_qid

        # -- The typed passwords: in their files only.
        api = await page.request.get(base + "/api/providers")
        audit = [dataclasses.asdict(a) for a in await s.spool.audit_log(limit=100)]
        assert any("relay1" in a["target"] for a in audit)
        places = {
            "yaml": _read(s.config_path),
            "html": "\n".join(pages) + await page.content(),
            "json": await api.text(),
            "log": caplog.text,
            "audit": json.dumps(audit),
        }
        for secret in (TYPED, MAILBOX):
            assert [where for where, text in places.items() if secret in text] == []
        await context.close()
