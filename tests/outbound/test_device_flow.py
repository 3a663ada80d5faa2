"""Connecting an XOAUTH2 provider by signing in (OAuth 2.0 device grant, RFC 8628).

The authorization server is a real HTTP server on loopback
(``tests/outbound/device_server.py``) that answers the device-code grant the
way RFC 8628 § 3.5 says: ``authorization_pending``, ``slow_down``,
``expired_token``; and refuses a revoked refresh token with ``invalid_grant``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.config import OAuth2Settings
from relay.model import RecipientStatus
from relay.outbound.device_flow import DEVICE_GRANT, DeviceFlow, DeviceFlowError
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.outbound.conftest import start_upstream
from tests.outbound.device_server import DeviceServer
from tests.outbound.helpers import SENDER, message, queue_id_of

SCOPE = "https://outlook.office365.com/SMTP.Send offline_access"


@pytest.fixture
async def device_server() -> AsyncIterator[DeviceServer]:
    server = await DeviceServer().start()
    yield server
    await server.stop()


def settings(server: DeviceServer, **extra: Any) -> OAuth2Settings:
    return OAuth2Settings(
        token_url=server.token_url,
        device_authorization_url=server.device_url,
        client_id="sluice-app",
        scope=SCOPE,
        **extra,
    )


class Sleeps:
    """The intervals the flow waited (the real clock is not worth seconds of a test)."""

    def __init__(self) -> None:
        self.waited: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)
        await asyncio.sleep(0)


async def test_pending_then_signed_in(device_server: DeviceServer) -> None:
    device_server.polls = ["authorization_pending", "authorization_pending", "ok"]
    device_server.interval = 3
    sleeps = Sleeps()
    flow = DeviceFlow(settings(device_server), sleep=sleeps)
    code = await flow.start()
    assert code.user_code == "WDJB-MJHT"
    assert code.verification_uri == "https://login.example.test/device"
    grant = await flow.wait(code)
    assert grant.refresh_token == "refresh-1"
    assert sleeps.waited == [3, 3, 3]
    (start,) = device_server.forms("/devicecode")
    assert start == {"client_id": "sluice-app", "scope": SCOPE}
    polls = device_server.forms("/token", DEVICE_GRANT)
    assert len(polls) == 3
    assert all(p["device_code"] == "dev-code-1" for p in polls)


async def test_slow_down_adds_to_the_interval_for_good(device_server: DeviceServer) -> None:
    device_server.polls = ["slow_down", "authorization_pending", "ok"]
    device_server.interval = 1
    sleeps = Sleeps()
    flow = DeviceFlow(settings(device_server), sleep=sleeps, slow_down_step=5)
    grant = await flow.wait(await flow.start())
    assert grant.refresh_token == "refresh-1"
    # RFC 8628 § 3.5: +5 s after slow_down, and it stays for later polls.
    assert sleeps.waited == [1, 6, 6]


@pytest.mark.parametrize(
    ("answer", "error"), [("expired_token", "expired_token"), ("access_denied", "access_denied")]
)
async def test_the_sign_in_ends_without_a_token(
    device_server: DeviceServer, answer: str, error: str
) -> None:
    device_server.polls = ["authorization_pending", answer]
    flow = DeviceFlow(settings(device_server), sleep=Sleeps())
    with pytest.raises(DeviceFlowError) as caught:
        await flow.wait(await flow.start())
    assert caught.value.error == error
    assert len(device_server.forms("/token", DEVICE_GRANT)) == 2


async def test_a_code_past_its_lifetime_is_not_polled(device_server: DeviceServer) -> None:
    device_server.expires_in = 0
    flow = DeviceFlow(settings(device_server), sleep=Sleeps())
    with pytest.raises(DeviceFlowError) as caught:
        await flow.wait(await flow.start())
    assert caught.value.error == "expired_token"
    assert device_server.forms("/token") == []


async def test_connect_from_the_cli_then_deliver_then_revoked(
    sluice: SluiceFactory,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    device_server: DeviceServer,
) -> None:
    """needs sign-in -> `sluice providers connect` -> connected, mail goes -> revoked -> failed."""
    used: list[str] = []

    def check(user: str, token: str) -> bool:
        used.append(token)
        return user == "me@example.com" and token.startswith("access-")

    up = await start_upstream(starttls_context=server_tls, users={}, extra_auth={"XOAUTH2": check})
    device_server.polls = ["authorization_pending", "ok"]
    p = provider_for(
        up,
        "m365",
        encryption="starttls",
        ca_file=str(ca_file),
        username="me@example.com",
        idle_timeout=0,  # a new session (and AUTH) per message
        oauth2={
            "token_url": device_server.token_url,
            "device_authorization_url": device_server.device_url,
            "client_id": "sluice-app",
            "scope": SCOPE,
            # Every use refreshes (tokens live 3600 s): the revocation shows at once.
            "refresh_margin": "3600s",
        },
    )
    try:
        async with sluice([p], retry={"first_delay": "1h", "max_delay": "1h"}) as s:
            (status,) = await s.daemon.snapshot().providers.status()
            assert status.oauth_sign_in == "needs sign-in"
            _, reply = await smtp_send(s.port, SENDER, ["r1@example.net"], message("first"))
            qid = queue_id_of(reply)
            await eventually(lambda: _status(s, qid, RecipientStatus.DEFERRED))
            (entry,) = (await s.spool.get(qid)).recipients
            assert "needs sign-in" in entry.reason
            assert "sluice providers connect m365" in entry.reason
            assert up.messages == []

            rc, out, err = await run_cli("providers", "connect", "m365", "-c", str(s.config_path))
            assert rc == 0, err
            assert "enter the code WDJB-MJHT" in out
            assert "https://login.example.test/device" in out
            assert "refresh-1" not in out + err  # tokens are never shown

            (status,) = await s.daemon.snapshot().providers.status()
            assert status.oauth_sign_in == "connected"
            await s.spool.retry_now(qid)
            await up.wait_for(1)
            # The stored refresh token was used, and the rotated one replaced it.
            refreshes = device_server.forms("/token", "refresh_token")
            assert refreshes[0]["refresh_token"] == "refresh-1"
            grant = await s.spool.oauth_grant("m365")
            assert grant is not None and grant.refresh_token == "refresh-2"

            device_server.revoked.add("refresh-2")
            _, reply = await smtp_send(s.port, SENDER, ["r2@example.net"], message("second"))
            qid2 = queue_id_of(reply)
            await eventually(lambda: _status(s, qid2, RecipientStatus.DEFERRED))
            (status,) = await s.daemon.snapshot().providers.status()
            assert status.oauth_sign_in == "sign-in failed"
            grant = await s.spool.oauth_grant("m365")
            assert grant is not None and grant.state == "failed"
            assert "invalid_grant" in grant.error
            assert len(up.messages) == 1
    finally:
        await up.stop()


async def test_connect_refuses_a_provider_without_device_sign_in(
    sluice: SluiceFactory, tmp_path: Path
) -> None:
    up = await start_upstream()
    try:
        async with sluice([provider_for(up, "plain")]) as s:
            rc, _out, err = await run_cli("providers", "connect", "plain", "-c", str(s.config_path))
            assert rc == 78
            assert "no oauth2.device_authorization_url" in err
            rc, _out, err = await run_cli("providers", "connect", "nope", "-c", str(s.config_path))
            assert rc == 64
            assert "no provider 'nope'" in err
    finally:
        await up.stop()


async def _status(s: Any, qid: str, want: RecipientStatus) -> bool:
    detail = await s.spool.get(qid)
    return all(r.status is want for r in detail.recipients)
