"""``sluice providers list`` and ``sluice providers test``, run as real processes."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from relay.secrets import MASK
from tests.conftest import fast_config, provider_for, write_config
from tests.daemon_proc import run_cli
from tests.outbound.conftest import start_upstream
from tests.upstream import TestUpstream

PASSWORD = "s3cret-Pa55word"
ENV = {"SLUICE_TEST_PASSWORD": PASSWORD}


async def test_providers_test_succeeds_with_every_step(
    tmp_path: Path, server_tls: ssl.SSLContext, ca_file: Path
) -> None:
    up = await start_upstream(starttls_context=server_tls, users={"relay": PASSWORD})
    try:
        p = provider_for(
            up,
            "mailco",
            encryption="starttls",
            ca_file=str(ca_file),
            username="relay",
            password_env="SLUICE_TEST_PASSWORD",
        )
        path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [p]))
        code, out, err = await run_cli("providers", "test", "mailco", "-c", str(path), env=ENV)
    finally:
        await up.stop()
    assert code == 0, out + err
    for line in ("ok   connect   220 ", "ok   EHLO      250", "ok   STARTTLS  220", "ok   AUTH"):
        assert line in out, out
    assert "ok   QUIT      221" in out
    assert "TLSv1.3" in out or "TLSv1.2" in out
    assert PASSWORD not in out + err


async def test_providers_test_fails_with_the_servers_reply(
    tmp_path: Path, server_tls: ssl.SSLContext, wrong_ca_file: Path, upstream: TestUpstream
) -> None:
    authy = await start_upstream(tls_context=server_tls, users={"relay": PASSWORD})
    try:
        bad_auth = provider_for(
            authy,
            "badauth",
            encryption="tls",
            tls_verify=False,
            allow_insecure_auth=True,  # unverified TLS: credentials only when allowed
            username="relay",
            password="wrong-Pa55word",
        )
        bad_ca = provider_for(authy, "badca", encryption="tls", ca_file=str(wrong_ca_file))
        path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [bad_auth, bad_ca]))
        code, out, err = await run_cli("providers", "test", "badauth", "-c", str(path), env=ENV)
        assert code == 69, out + err
        assert "FAIL AUTH      535 5.7.8" in out
        assert "FAILED" in out
        code, out, _ = await run_cli("providers", "test", "badca", "-c", str(path), env=ENV)
        assert code == 69
        assert "FAIL TLS       certificate verification failed" in out
    finally:
        await authy.stop()
    code, out, err = await run_cli("providers", "test", "nosuch", "-c", str(path), env=ENV)
    assert code == 64 and "no provider 'nosuch'" in err
    assert "wrong-Pa55word" not in out + err


async def test_providers_list_masks_secrets_and_shows_usage(tmp_path: Path) -> None:
    providers = [
        {
            "id": "main",
            "host": "127.0.0.1",
            "port": 2525,
            "username": "relay",
            "password": PASSWORD,
            "daily_limit": 500,
            "rate": "10/s",
        },
        {
            "id": "m365",
            "host": "127.0.0.1",
            "port": 2526,
            "priority": 200,
            "username": "me@example.com",
            "oauth2": {
                "token_url": "http://127.0.0.1:1/token",
                "client_id": "app",
                "client_secret": "client-S3CRET",
                "refresh_token": "refresh-T0KEN",
            },
        },
    ]
    path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, providers))
    code, out, err = await run_cli("providers", "list", "-c", str(path), env=ENV)
    assert code == 0, err
    assert f"relay / {MASK}" in out
    assert "0 sent / 500" in out and "rate:        10/s" in out
    assert f"client_secret {MASK}" in out and f"refresh_token {MASK}" in out
    for secret in (PASSWORD, "client-S3CRET", "refresh-T0KEN"):
        assert secret not in out + err
    code, out, _ = await run_cli("providers", "list", "--json", "-c", str(path), env=ENV)
    rows = json.loads(out)
    assert [r["id"] for r in rows] == ["main", "m365"]
    assert rows[0]["daily_limit"] == 500 and rows[0]["sent_today"] == 0
