"""The provider page's Connect button: the OAuth 2.0 device grant (RFC 8628), started by the admin.

The authorization server is a real HTTP server on loopback that answers the
device grant as RFC 8628 § 3.5 says (``tests/outbound/device_server.py``);
the provider is a real XOAUTH2 upstream that mail then goes through.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.conftest import start_upstream
from tests.outbound.device_server import DeviceServer
from tests.outbound.helpers import SENDER, message

SCOPE = "https://outlook.office365.com/SMTP.Send offline_access"


@pytest.fixture
async def device_server() -> AsyncIterator[DeviceServer]:
    server = await DeviceServer().start()
    yield server
    await server.stop()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def m365(up: Any, ca_file: Path, server: DeviceServer) -> dict[str, Any]:
    return provider_for(
        up,
        "m365",
        encryption="starttls",
        ca_file=str(ca_file),
        username="me@example.com",
        oauth2={
            "token_url": server.token_url,
            "device_authorization_url": server.device_url,
            "client_id": "sluice-app",
            "scope": SCOPE,
        },
    )


async def test_connect_from_the_provider_page_then_mail_goes(
    sluice: SluiceFactory,
    app_client: AppClientFactory,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    device_server: DeviceServer,
) -> None:
    used: list[str] = []

    def check(user: str, token: str) -> bool:
        used.append(token)
        return token.startswith("access-")

    up = await start_upstream(starttls_context=server_tls, users={}, extra_auth={"XOAUTH2": check})
    device_server.polls = ["authorization_pending", "authorization_pending", "ok"]
    try:
        async with sluice([m365(up, ca_file, device_server)]) as s, app_client(s) as c:
            page = (await c.get("/providers/m365")).text
            assert 'id="connect-button"' in page
            assert "needs sign-in" in page  # grey until someone signs in
            listing = (await c.get("/providers")).text
            assert 'class="health h-unknown sign-in">needs sign-in' in listing
            # Without the CSRF token the button does nothing.
            assert (await c.post("/providers/m365/connect")).status_code == 403
            r = await c.post("/providers/m365/connect", data={"csrf_token": csrf_of(page)})
            assert r.status_code == 303 and r.headers["location"] == "/providers/m365#sign-in"
            shown = (await c.get("/providers/m365")).text
            assert "WDJB-MJHT" in shown and "https://login.example.test/device" in shown

            async def connected() -> bool:
                body = (await c.get("/api/providers/m365/connect")).json()
                assert body["state"] in ("pending", "connected"), body
                return bool(body["state"] == "connected")

            await eventually(connected)
            grant = await s.spool.oauth_grant("m365")
            assert grant is not None and grant.state == "connected"
            done = (await c.get("/providers/m365")).text
            assert "Connected" in done and 'class="health h-ok sign-in">connected' in done
            assert "refresh-1" not in done  # tokens are never shown

            await smtp_send(s.port, SENDER, ["r@example.net"], message("after sign-in"))
            await up.wait_for(1)
            assert used and used[-1].startswith("access-")
    finally:
        await up.stop()


async def test_the_api_starts_a_sign_in_and_reports_a_refusal(
    sluice: SluiceFactory,
    app_client: AppClientFactory,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    device_server: DeviceServer,
) -> None:
    up = await start_upstream(starttls_context=server_tls, users={})
    device_server.polls = ["authorization_pending", "access_denied"]
    try:
        async with sluice([m365(up, ca_file, device_server), provider_for(up, "plain")]) as s:
            async with app_client(s, token="t0ken") as c:
                auth = {"authorization": "Bearer t0ken"}
                r = await c.post("/api/providers/m365/connect", headers=auth)
                assert r.status_code == 202
                started = r.json()
                assert started["user_code"] == "WDJB-MJHT" and started["state"] == "pending"

                async def failed() -> bool:
                    body = (await c.get("/api/providers/m365/connect", headers=auth)).json()
                    return bool(body["state"] == "failed")

                await eventually(failed)
                body = (await c.get("/api/providers/m365/connect", headers=auth)).json()
                assert "refused" in body["error"]
                assert await s.spool.oauth_grant("m365") is None
                # A provider without a device sign-in, and one that does not exist.
                r = await c.post("/api/providers/plain/connect", headers=auth)
                assert r.status_code == 409 and "device_authorization_url" in r.json()["error"]
                r = await c.post("/api/providers/nope/connect", headers=auth)
                assert r.status_code == 404
    finally:
        await up.stop()
