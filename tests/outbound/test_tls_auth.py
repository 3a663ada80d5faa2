"""TLS (STARTTLS and implicit) with verification, AUTH failures, and XOAUTH2 end to end."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.model import QueueEntry, RecipientStatus
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.conftest import start_upstream
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.outbound.token_server import TokenServer
from tests.upstream import TestUpstream

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
async def starttls_upstream(server_tls: ssl.SSLContext) -> AsyncIterator[TestUpstream]:
    up = await start_upstream(starttls_context=server_tls, users={"relay": PASSWORD})
    yield up
    await up.stop()


@pytest.fixture
async def tls_upstream(server_tls: ssl.SSLContext) -> AsyncIterator[TestUpstream]:
    up = await start_upstream(tls_context=server_tls, users={"relay": PASSWORD})
    yield up
    await up.stop()


async def _deferred(s: object, qid: str) -> list[QueueEntry]:
    found = await entries(s.spool, qid)  # type: ignore[attr-defined]
    return [e for e in found if e.status is RecipientStatus.DEFERRED]


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_tls_with_verification_and_auth(
    sluice: SluiceFactory,
    mode: str,
    starttls_upstream: TestUpstream,
    tls_upstream: TestUpstream,
    ca_file: Path,
) -> None:
    up = starttls_upstream if mode == "starttls" else tls_upstream
    p = provider_for(up, encryption=mode, ca_file=str(ca_file), username="relay", password=PASSWORD)
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (got,) = await up.wait_for(1)
        await eventually(lambda: sent(s.spool, queue_id_of(reply)))
    assert got.tls is True
    assert got.login == "relay"


@pytest.mark.parametrize("mode", ["starttls", "tls"])
async def test_wrong_ca_is_refused_and_nothing_is_sent(
    sluice: SluiceFactory,
    mode: str,
    starttls_upstream: TestUpstream,
    tls_upstream: TestUpstream,
    wrong_ca_file: Path,
) -> None:
    up = starttls_upstream if mode == "starttls" else tls_upstream
    p = provider_for(
        up, encryption=mode, ca_file=str(wrong_ca_file), username="relay", password=PASSWORD
    )
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
        (status,) = await s.daemon.snapshot().providers.status()
    assert "certificate" in entry.reason.lower() or "tls" in entry.reason.lower()
    assert "verify" in entry.reason.lower()
    assert up.messages == []
    assert status.health in ("error", "cooldown") and status.last_error


async def test_starttls_required_is_never_downgraded(
    sluice: SluiceFactory, upstream: TestUpstream, ca_file: Path
) -> None:
    # This upstream offers no STARTTLS at all.
    p = provider_for(upstream, encryption="starttls", ca_file=str(ca_file))
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    assert "does not offer STARTTLS" in entry.reason
    assert upstream.messages == []


async def test_auth_failure_is_reported_clearly(
    sluice: SluiceFactory, starttls_upstream: TestUpstream, ca_file: Path
) -> None:
    p = provider_for(
        starttls_upstream,
        "mailco",
        encryption="starttls",
        ca_file=str(ca_file),
        username="relay",
        password="wrong-Pa55word",
    )
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: _deferred(s, qid))
        (log,) = await s.spool.list_log(search=qid)
        (status,) = await s.daemon.snapshot().providers.status()
    assert entry.reason.startswith("authentication failed: 535")
    assert entry.provider == "mailco"
    assert log.reason == entry.reason and log.provider == "mailco"
    assert "authentication failed" in status.last_error
    assert starttls_upstream.messages == []


async def test_no_credentials_in_clear(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    p = provider_for(upstream, username="relay", password=PASSWORD)  # encryption: none
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    assert "refusing to send credentials without TLS" in entry.reason
    assert upstream.messages == []


async def test_no_credentials_in_clear_to_a_starttls_server_names_encryption_starttls(
    sluice: SluiceFactory, starttls_upstream: TestUpstream
) -> None:
    # encryption: none against a server that offers STARTTLS: the fix is to use it.
    p = provider_for(starttls_upstream, username="relay", password=PASSWORD)
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    assert "refusing to send credentials without TLS" in entry.reason
    assert "the server offers STARTTLS: set encryption: starttls" in entry.reason
    assert "allow_insecure_auth" not in entry.reason
    assert starttls_upstream.messages == []


async def test_xoauth2_end_to_end_with_refresh_and_reauthorize(
    sluice: SluiceFactory, server_tls: ssl.SSLContext, ca_file: Path, token_server: TokenServer
) -> None:
    accepted = {"access-T0KEN-1", "access-T0KEN-2"}
    used: list[str] = []

    def check(user: str, token: str) -> bool:
        used.append(token)
        return user == "me@example.com" and token in accepted

    up = await start_upstream(starttls_context=server_tls, users={}, extra_auth={"XOAUTH2": check})
    token_server.responses = [
        TokenServer.issue("access-T0KEN-1", 100),  # inside the 300 s margin: refreshed next use
        TokenServer.issue("access-T0KEN-2", 3600),
        (400, {"error": "invalid_grant", "error_description": "AADSTS70008: token expired"}),
    ]
    p = provider_for(
        up,
        "m365",
        encryption="starttls",
        ca_file=str(ca_file),
        username="me@example.com",
        idle_timeout=0,  # a new session (and AUTH) per message
        oauth2={
            "token_url": token_server.url,
            "client_id": "sluice-app",
            "client_secret": "client-S3CRET",
            "refresh_token": "refresh-T0KEN",
            "scope": "https://outlook.office365.com/SMTP.Send offline_access",
            "refresh_margin": "300s",
        },
    )
    try:
        async with sluice([p]) as s:
            for i in range(3):
                await smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}"))
                await up.wait_for(i + 1)
            # 1: first token; 2: refreshed before expiry; 3: still valid, reused.
            assert used == ["access-T0KEN-1", "access-T0KEN-2", "access-T0KEN-2"]
            assert len(token_server.requests) == 2
            form = token_server.requests[0]
            assert form["grant_type"] == "refresh_token"
            assert form["refresh_token"] == "refresh-T0KEN"
            assert form["client_id"] == "sluice-app" and form["client_secret"] == "client-S3CRET"
            assert form["scope"].startswith("https://outlook.office365.com/SMTP.Send")
            assert {m.login for m in up.messages} == {"me@example.com"}
            (status,) = await s.daemon.snapshot().providers.status()
            assert status.oauth_state == "valid"
            assert status.oauth_valid_until is not None

            # The server revokes the token, and the refresh token is no longer good.
            accepted.clear()
            _, reply = await smtp_send(s.port, SENDER, ["late@example.net"], message("late"))
            qid = queue_id_of(reply)

            async def reauth_shown() -> list[QueueEntry]:
                found = await entries(s.spool, qid)
                return [e for e in found if "re-authorisation needed" in e.reason]

            (entry,) = await eventually(reauth_shown)
            assert entry.status in (RecipientStatus.DEFERRED, RecipientStatus.QUEUED)
            assert "invalid_grant" in entry.reason
            (status,) = await s.daemon.snapshot().providers.status()
            assert status.oauth_state == "reauthorize"
            assert "invalid_grant" in status.oauth_last_error
            assert len(up.messages) == 3
    finally:
        await up.stop()


async def test_no_credentials_over_unverified_tls(
    sluice: SluiceFactory, tls_upstream: TestUpstream
) -> None:
    p = provider_for(
        tls_upstream, encryption="tls", tls_verify=False, username="relay", password=PASSWORD
    )
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    assert "not verified" in entry.reason
    assert tls_upstream.messages == []
