"""A token endpoint that echoes the request in its errors leaks no secret anywhere (#23 point 8).

Some OAuth servers repeat the request they refuse (client secret, refresh
token) in ``error_description``. Sluice must mask what it sent and what it got
(the config's secrets, and the tokens obtained at run time) wherever such
text is kept or shown: the admin's pages and API, the CLI, the spool's rows
and the webhook events. Everything here is real: ``sluice serve`` as a
subprocess, its admin over HTTP with a logged-in session, the CLI as
subprocesses, a local token endpoint, an SMTP upstream and a webhook receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import yaml

from relay.model import QueueEntry
from relay.secrets import MASK
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send, write_config
from tests.daemon_proc import DaemonProcess, run_cli
from tests.peers import free_port
from tests.upstream import TestUpstream
from tests.webhook_receiver import WebhookReceiver

CLIENT_SECRET = "Cl1entSecret-echo-4e1f"
REFRESH = "Refr3shTok-echo-9a0b"
#: obtained at run time: never in the config
ROTATED = "R0tatedRefresh-echo-77c2"
ACCESS = "Acc3ssTok-echo-13d5"
ADMIN_PW = "Adm1n-echo-Pw-5b5b"
HOOK_SECRET = "H00kSecret-echo-0c0c"
PROVIDER_PW = "Prov1derPw-echo-2d2d"
SECRETS = (CLIENT_SECRET, REFRESH, ROTATED, ACCESS, ADMIN_PW, HOOK_SECRET, PROVIDER_PW)


@dataclass
class EchoingTokenEndpoint:
    """A token endpoint on 127.0.0.1:0 that puts the raw request into its error answers.

    ``/token``: first a 500 echoing the request, then one grant (an access
    token and a rotated refresh token), then 400 ``invalid_grant`` echoing the
    request. ``/devicecode``: 400 echoing the request.
    """

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token_forms(self) -> list[dict[str, str]]:
        return [form for path, form in self.requests if path == "/token"]

    async def start(self) -> EchoingTokenEndpoint:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _answer(self, path: str, raw: str) -> tuple[int, dict[str, Any]]:
        if path == "/devicecode":
            return 400, {"error": "invalid_client", "error_description": f"bad client: {raw}"}
        n = len(self.token_forms())
        if n == 1:
            return 500, {"error": "server_error", "error_description": f"cannot handle {raw}"}
        if n == 2:
            return 200, {
                "access_token": ACCESS,
                "refresh_token": ROTATED,
                "token_type": "Bearer",
                "expires_in": 3600,
            }
        return 400, {
            "error": "invalid_grant",
            "error_description": f"grant revoked; request was {raw}",
            "request": dict(parse_qsl(raw)),
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            raw = (await reader.readexactly(length)).decode() if length else ""
            self.requests.append((path, dict(parse_qsl(raw))))
            status, payload = self._answer(path, raw)
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def echo_endpoint() -> AsyncIterator[EchoingTokenEndpoint]:
    server = await EchoingTokenEndpoint().start()
    yield server
    await server.stop()


@pytest.fixture
async def webhook_rx() -> AsyncIterator[WebhookReceiver]:
    rx = await WebhookReceiver().start()
    yield rx
    await rx.stop()


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


class Leaks(dict[str, list[str]]):
    """Where each secret was found: every place is looked at before the test fails."""

    def look(self, where: str, text: str) -> None:
        if found := _leaks(text):
            self[where] = found


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _look_at_the_spool(spool: Path, leaks: Leaks) -> None:
    """The bytes of the database and its WAL, and every value of every row."""
    files = [p for p in spool.parent.iterdir() if p.name.startswith(spool.name)]
    assert spool in files
    for file in files:
        leaks.look(f"the bytes of {file.name}", file.read_bytes().decode("latin-1"))
    with contextlib.closing(sqlite3.connect(spool)) as db:
        tables = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                leaks.look(f"a row of {table}", " ".join(str(v) for v in row))


async def test_an_echoing_token_endpoint_leaks_no_secret_to_any_page_answer_row_or_event(
    tmp_path: Path,
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    echo_endpoint: EchoingTokenEndpoint,
    webhook_rx: WebhookReceiver,
) -> None:
    used: list[str] = []

    def refuse(user: str, token: str) -> str:  # the provider refuses every token, echoing it
        used.append(token)
        return f"535 5.7.8 token {token} of {user} is not valid"

    upstream = await TestUpstream(users={}, extra_auth={"XOAUTH2": refuse}).start()
    oauth2 = {
        "token_url": f"{echo_endpoint.base}/token",
        "client_id": "sluice-app",
        "client_secret": CLIENT_SECRET,
    }
    ms = provider_for(
        upstream,
        "ms",
        username="me@example.com",
        allow_insecure_auth=True,
        idle_timeout=0,
        failure_threshold=2,
        cooldown="0.5s",
        oauth2={**oauth2, "refresh_token": REFRESH},
    )
    # A second one signed in by the device grant, whose endpoint echoes as well.
    dev = provider_for(
        upstream,
        "dev",
        enabled=False,
        username="me@example.com",
        allow_insecure_auth=True,
        oauth2={**oauth2, "device_authorization_url": f"{echo_endpoint.base}/devicecode"},
    )
    admin_port = free_port("127.0.0.1")
    path = ops_config(
        [ms, dev],
        admin={"enabled": True, "listen": f"127.0.0.1:{admin_port}", "password": ADMIN_PW},
        notify={"webhooks": [{"url": webhook_rx.url, "secret": HOOK_SECRET}]},
    )
    cfg = str(path)
    leaks = Leaks()
    try:
        daemon = await daemon_proc(path).start()
        _, reply = await smtp_send(
            daemon.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n"
        )
        qid = reply.rsplit(" ", 1)[-1]

        # 1: a 500 echoing the config's secret and refresh token; 2: a grant, whose
        # access token the provider refuses, echoing it; 3: invalid_grant echoing
        # the rotated refresh token.
        await eventually(lambda: len(echo_endpoint.token_forms()) >= 3, within=30)
        forms = echo_endpoint.token_forms()
        assert forms[0]["client_secret"] == CLIENT_SECRET
        assert forms[0]["refresh_token"] == REFRESH
        assert forms[2]["refresh_token"] == ROTATED
        assert used and used[0] == ACCESS

        def reauthorize_reported(hits: list[Any]) -> bool:
            return any(b"re-authorisation needed" in h.body for h in hits)

        await webhook_rx.wait_for(reauthorize_reported, within=30)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}", timeout=30) as c:
            login = await c.get("/login")
            r = await c.post(
                "/login",
                data={"username": "admin", "password": ADMIN_PW, "csrf_token": _csrf(login.text)},
            )
            assert r.status_code == 303, r.text
            pages = [
                "/",
                "/providers",
                "/providers/ms",
                "/providers/dev",
                "/queue",
                "/log",
                f"/messages/{qid}",
                "/webhooks",
                "/audit",
                "/api/overview",
                "/api/providers",
                "/api/providers/ms",
                "/api/providers/dev",
                "/api/queue",
                "/api/log",
                f"/api/messages/{qid}",
                "/api/webhooks",
                "/api/audit",
                "/metrics",
                "/healthz",
            ]
            shown: dict[str, str] = {}
            for page in pages:
                resp = await c.get(page)
                assert resp.status_code == 200, (page, resp.status_code)
                shown[page] = resp.text
            # The answers to the connection test and to Connect (the device grant).
            provider_page = shown["/providers/ms"]
            for action in ("/providers/ms/test", "/providers/dev/connect"):
                resp = await c.post(action, data={"csrf_token": _csrf(provider_page)})
                assert resp.status_code in (200, 303, 400, 502), (action, resp.status_code)
                shown[action] = resp.text
            for action in ("/api/providers/ms/test", "/api/providers/dev/connect"):
                resp = await c.post(action, auth=("admin", ADMIN_PW))
                shown[action] = resp.text
            for page, text in shown.items():
                leaks.look(page, text)

        for command in (
            ("queue", "list"),
            ("queue", "show", qid),
            ("providers", "list"),
            ("providers", "test", "ms"),
            ("providers", "connect", "dev"),
        ):
            rc, out, err = await run_cli(*command, "-c", cfg)
            leaks.look("sluice " + " ".join(command), out + err)
            if command[:2] == ("queue", "show"):
                assert rc == 0 and "token refresh failed" in out, (out, err)

        assert webhook_rx.requests
        for n, hit in enumerate(webhook_rx.requests):
            leaks.look(f"webhook event {n}: {hit.event['type']}", hit.body.decode())

        assert await daemon.stop() == 0
        leaks.look("the daemon's log", daemon.output)
    finally:
        await upstream.stop()

    _look_at_the_spool(tmp_path / "spool.sqlite3", leaks)
    assert leaks == {}
    # What was echoed is still shown, masked: the operator sees why.
    assert "token refresh failed" in shown["/providers/ms"]
    assert "re-authorisation needed" in shown[f"/messages/{qid}"]
    assert f"token {MASK} of me@example.com is not valid" in shown["/api/log"]
    assert f"refresh_token={MASK}&client_secret={MASK}" in shown["/api/providers/ms"]
    assert MASK in shown["/providers/ms"] and MASK in shown[f"/api/messages/{qid}"]


async def test_a_provider_reply_echoing_its_password_is_stored_and_sent_masked(
    sluice: SluiceFactory, upstream: TestUpstream, webhook_rx: WebhookReceiver, tmp_path: Path
) -> None:
    # The provider's own reply repeats the password it was given: the spool's
    # choke point masks it in the delivery log, the webhook event and the DSN.
    upstream.users = {"relay": PROVIDER_PW}
    upstream.reply["RCPT"] = f"550 5.1.1 no such user (you are relay/{PROVIDER_PW})"
    p = provider_for(upstream, username="relay", password=PROVIDER_PW, allow_insecure_auth=True)
    notify = {"dsn": True, "webhooks": [{"url": webhook_rx.url, "secret": HOOK_SECRET}]}
    async with sluice([p], notify=notify) as s:
        _, reply = await smtp_send(
            s.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n"
        )
        qid = reply.rsplit(" ", 1)[-1]
        await webhook_rx.wait_for(lambda hits: any(b"no such user" in h.body for h in hits))
        (log,) = await s.spool.list_log(search=qid)

        async def dsns() -> list[QueueEntry]:
            return [e for e in await s.spool.list_queue() if e.queue_id != qid]

        (dsn_entry, *_) = await eventually(dsns)
        dsn = await s.spool.raw(dsn_entry.queue_id)
        (status,) = await s.daemon.snapshot().providers.status()
    assert log.reason == f"550 5.1.1 no such user (you are relay/{MASK})"
    bodies = [h.body.decode() for h in webhook_rx.requests]
    assert any(f"relay/{MASK}" in b for b in bodies)
    assert not [b for b in bodies if PROVIDER_PW in b]
    assert b"no such user" in dsn and PROVIDER_PW.encode() not in dsn
    assert PROVIDER_PW not in status.last_error
    leaks = Leaks()
    _look_at_the_spool(tmp_path / "spool.sqlite3", leaks)
    assert leaks == {}


async def test_a_password_changed_by_reload_is_masked_in_what_is_stored_from_then_on(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    new_pw = "N3wProvPw-echo-6e6e"
    upstream.users = {"relay": PROVIDER_PW}
    p = provider_for(upstream, username="relay", password=PROVIDER_PW, allow_insecure_auth=True)
    async with sluice([p]) as s:
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["providers"][0]["password"] = new_pw
        write_config(s.config_path, cfg)
        upstream.users = {"relay": new_pw}
        assert await s.daemon.reload() is True, s.daemon.last_reload_error
        upstream.reply["RCPT"] = f"550 5.1.1 no such user (you are relay/{new_pw})"
        _, reply = await smtp_send(
            s.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nbody\r\n"
        )
        qid = reply.rsplit(" ", 1)[-1]

        async def logged() -> list[Any]:
            return [e for e in await s.spool.list_log(search=qid) if e.reason]

        (log,) = await eventually(logged)
    assert log.reason == f"550 5.1.1 no such user (you are relay/{MASK})"
