"""The outbound handshake against real peers: HELO fallback, wrong encryption, AUTH mechanism.

Delivery (the queue's reason) and ``sluice providers test`` run the same
handshake; each case checks both.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path

import pytest

from relay.config import load
from relay.errors import ConfigError
from relay.model import QueueEntry, RecipientStatus
from relay.outbound.handshake import SPEAKS_PLAIN, SPEAKS_TLS
from tests.conftest import (
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    smtp_send,
    write_config,
)
from tests.daemon_proc import run_cli
from tests.outbound.conftest import start_upstream
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.peers import smtp_sink
from tests.upstream import TestUpstream


async def _deferred(s: object, qid: str) -> list[QueueEntry]:
    found = await entries(s.spool, qid)  # type: ignore[attr-defined]
    return [e for e in found if e.status is RecipientStatus.DEFERRED]


# ------------------------------------------------------------------ HELO fallback


async def test_a_server_without_esmtp_gets_helo_and_the_mail(
    sluice: SluiceFactory, tmp_path: Path
) -> None:
    # smtp-sink -e answers EHLO with 500 (RFC 5321 § 3.2: the client then says HELO).
    async with smtp_sink("-e") as sink:
        p = {"id": "old", "host": sink.host, "port": sink.port, "encryption": "none"}
        async with sluice([p]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["user@example.net"], message("helo"))
            (got,) = await sink.wait_for(1)
            await eventually(lambda: sent(s.spool, queue_id_of(reply)))
        # No extension after HELO: no SIZE=, BODY= or SMTPUTF8 on MAIL FROM.
        assert got.helo == "sluice.test"
        assert got.mail_args == ""
        assert got.recipients == ["user@example.net"]

        path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))
        code, out, err = await run_cli("providers", "test", "old", "-c", str(path))
    assert code == 0, out + err
    assert "FAIL EHLO      500" in out and "trying HELO" in out
    assert "ok   HELO      250" in out
    assert out.index("EHLO") < out.index("HELO") < out.index("QUIT")
    assert "=> OK" in out


async def test_starttls_required_and_no_esmtp_is_a_clear_provider_error(
    sluice: SluiceFactory, ca_file: Path, tmp_path: Path
) -> None:
    async with smtp_sink("-e") as sink:
        p = {
            "id": "old",
            "host": sink.host,
            "port": sink.port,
            "encryption": "starttls",
            "ca_file": str(ca_file),
        }
        async with sluice([p]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["user@example.net"], message())
            (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
        path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))
        code, out, _ = await run_cli("providers", "test", "old", "-c", str(path))
        assert sink.messages() == []
    assert "refused EHLO (500" in entry.reason
    assert "cannot offer STARTTLS" in entry.reason and "refusing to send in clear" in entry.reason
    assert code == 69
    assert "FAIL EHLO      500" in out and "no STARTTLS" in out
    assert "HELO " not in out.replace("EHLO", "")


# ------------------------------------------------------- wrong encryption for the port


@pytest.mark.parametrize("mode", ["starttls", "none"])
async def test_plain_or_starttls_against_an_implicit_tls_port_says_use_tls(
    sluice: SluiceFactory,
    mode: str,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    up = await start_upstream(tls_context=server_tls)
    try:
        p = provider_for(up, "smtps", encryption=mode, ca_file=str(ca_file), timeout="20s")
        path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))

        async def deliver() -> QueueEntry:
            async with sluice([p]) as s:
                _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
                found: list[QueueEntry] = await eventually(
                    lambda: _deferred(s, queue_id_of(reply)), within=30
                )
            (entry,) = found
            return entry

        async def check() -> tuple[int, str, float]:
            started = time.monotonic()
            code, out, _ = await run_cli("providers", "test", "smtps", "--json", "-c", str(path))
            return code, out, time.monotonic() - started

        # The delivery and the CLI each wait out the banner wait: at the same time.
        entry, (code, out, took) = await asyncio.gather(deliver(), check())
    finally:
        await up.stop()
    assert SPEAKS_TLS in entry.reason
    assert entry.reason.startswith("4.4.1 no greeting from 127.0.0.1:")
    assert up.messages == []
    assert code == 69
    report = json.loads(out)["smtps"]
    (step,) = report["steps"]
    assert step["name"] == "connect" and not step["ok"]
    assert step["detail"] == f"no greeting within 2.5 s: {SPEAKS_TLS}"
    # Found out after the short banner wait, not the 20 s connect timeout.
    assert 2.5 <= step["elapsed"] < 15 and took < 20


async def test_a_slow_greeting_is_waited_for_not_mistaken_for_tls(
    sluice: SluiceFactory, tmp_path: Path
) -> None:
    # smtp-sink -W connect:4 greets after 4 s: past the 2.5 s banner wait, so
    # the TLS check runs, finds no TLS, and the full connect timeout applies.
    async with smtp_sink("-W", "connect:4") as sink:
        p = {
            "id": "slow",
            "host": sink.host,
            "port": sink.port,
            "encryption": "none",
            "timeout": "15s",
        }
        path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))

        async def deliver() -> None:
            async with sluice([p]) as s:
                _, reply = await smtp_send(s.port, SENDER, ["user@example.net"], message("slow"))
                await sink.wait_for(1, within=30)
                await eventually(lambda: sent(s.spool, queue_id_of(reply)), within=30)

        # The delivery and the CLI each wait out the 4 s greeting: at the same time.
        _, (code, out, err) = await asyncio.gather(
            deliver(), run_cli("providers", "test", "slow", "--json", "-c", str(path))
        )
    assert code == 0, out + err
    connect = json.loads(out)["slow"]["steps"][0]
    assert connect["name"] == "connect" and connect["ok"]
    assert connect["detail"].startswith("220 ")
    assert connect["elapsed"] >= 3.5


async def test_tls_against_a_plain_port_says_use_starttls(
    sluice: SluiceFactory, upstream: TestUpstream, ca_file: Path, tmp_path: Path
) -> None:
    p = provider_for(upstream, "plain", encryption="tls", ca_file=str(ca_file))
    async with sluice([p]) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    path = write_config(tmp_path / "cli.yaml", fast_config(tmp_path, [p]))
    code, out, _ = await run_cli("providers", "test", "plain", "-c", str(path))
    assert entry.reason.startswith("4.7.5 TLS failure: ")
    assert entry.reason.endswith(SPEAKS_PLAIN)
    assert upstream.messages == []
    assert code == 69
    assert "ok   connect   connected to 127.0.0.1:" in out
    assert "FAIL TLS       SSLError: " in out and SPEAKS_PLAIN in out


async def test_a_certificate_problem_is_not_mistaken_for_a_plain_port(
    sluice: SluiceFactory, server_tls: ssl.SSLContext, wrong_ca_file: Path
) -> None:
    up = await start_upstream(tls_context=server_tls)
    try:
        p = provider_for(up, encryption="tls", ca_file=str(wrong_ca_file))
        async with sluice([p]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
            (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    finally:
        await up.stop()
    assert "certificate verify failed" in entry.reason
    assert SPEAKS_PLAIN not in entry.reason and SPEAKS_TLS not in entry.reason


# ------------------------------------------------------------------ AUTH mechanism


async def test_a_mechanism_the_server_does_not_offer_is_never_tried(
    sluice: SluiceFactory, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    # aiosmtpd offers LOGIN and PLAIN (and the fake's XOAUTH2), not CRAM-MD5.
    up = await start_upstream(starttls_context=server_tls, users={"relay": "s3cret-Pa55word"})
    try:
        p = provider_for(
            up,
            encryption="starttls",
            ca_file=str(ca_file),
            username="relay",
            password="s3cret-Pa55word",
            auth_mechanism="cram-md5",
        )
        async with sluice([p]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
            (entry,) = await eventually(lambda: _deferred(s, queue_id_of(reply)))
    finally:
        await up.stop()
    assert "the server does not offer AUTH CRAM-MD5 (it offers: " in entry.reason
    assert "PLAIN" in entry.reason and "see auth_mechanism" in entry.reason
    assert up.messages == []


async def test_the_configured_mechanism_is_used(
    sluice: SluiceFactory, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    up = await start_upstream(starttls_context=server_tls, users={"relay": "s3cret-Pa55word"})
    try:
        p = provider_for(
            up,
            encryption="starttls",
            ca_file=str(ca_file),
            username="relay",
            password="s3cret-Pa55word",
            auth_mechanism="login",
        )
        async with sluice([p]) as s:
            _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
            (got,) = await up.wait_for(1)
            await eventually(lambda: sent(s.spool, queue_id_of(reply)))
    finally:
        await up.stop()
    assert got.login == "relay" and got.tls


@pytest.mark.parametrize(
    ("extra", "message_part"),
    [
        ({"auth_mechanism": "digest-md5"}, "providers.0.auth_mechanism: Input should be"),
        ({"auth_mechanism": "xoauth2"}, "auth_mechanism 'xoauth2' needs oauth2 settings"),
        (
            {
                "auth_mechanism": "plain",
                "oauth2": {"token_url": "http://127.0.0.1:1/t", "client_id": "app"},
            },
            "auth_mechanism 'plain' cannot be used with oauth2",
        ),
    ],
)
def test_a_wrong_auth_mechanism_is_a_config_error_with_its_line(
    tmp_path: Path, extra: dict[str, object], message_part: str
) -> None:
    p = {"id": "main", "host": "127.0.0.1", "port": 2525, "username": "relay", **extra}
    path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [p]))
    with pytest.raises(ConfigError) as err:
        load(path)
    (issue,) = err.value.issues
    assert issue.startswith(f"{path}:")
    assert message_part in issue
    line = int(issue.split(":")[1])
    text = path.read_text().splitlines()[line - 1]
    assert "auth_mechanism" in text or "- id: main" in text
