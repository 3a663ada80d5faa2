"""Address rules through a real ``sluice serve``: aliases, redirect, archive_bcc and headers.

One daemon subprocess (with the admin on loopback) and one upstream serve the
module: mail goes in through real clients (swaks over SMTP, ``sluice
sendmail`` as cron runs it) and the upstream records what arrives; the
original recipient is read back from ``sluice queue show`` and the admin's
message page. The daemon-down path of ``sluice sendmail`` has a daemon of its
own, started after the message is spooled.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from relay.address_rules import ORIGINAL_TO_HEADER
from relay.store.spool import Spool
from tests.conftest import fast_config, provider_for, write_config
from tests.daemon_proc import DaemonProcess, run_cli, start_daemon
from tests.peers import require, run_peer
from tests.upstream import Received, TestUpstream

pytestmark = pytest.mark.asyncio(loop_scope="module")

ALIASES = {"root": "ops@example.com", "cron@localhost": ["ops@example.com", "dev@example.com"]}
REDIRECT = {"to": "qa@example.com", "allow": ["example.com", "*.example.org"]}
ARCHIVE = {"to": "archive@example.com"}
HEADERS = {"remove": ["X-Mailer", "X-Internal-*"], "add": {"X-Relay": "sluice"}}
#: this provider's own headers: adds its field to the top-level ones
PROVIDER_HEADERS = {"add": {"X-Provider-Tag": "up1"}}


@dataclass
class Relay:
    daemon: DaemonProcess
    upstream: TestUpstream
    config: Path
    admin: str


def _config(tmp: Path, upstream: TestUpstream, **sections: Any) -> Path:
    cfg = fast_config(
        tmp,
        [provider_for(upstream, headers=PROVIDER_HEADERS)],
        aliases=ALIASES,
        **sections,
    )
    return write_config(tmp / "sluice.yaml", cfg)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Relay]:
    tmp = tmp_path_factory.mktemp("rules")
    upstream = await TestUpstream().start()
    path = _config(
        tmp,
        upstream,
        redirect=REDIRECT,
        archive_bcc=ARCHIVE,
        headers=HEADERS,
        admin={"enabled": True, "listen": "127.0.0.1:0"},
    )
    daemon = await start_daemon(path)
    try:
        admin = await daemon.wait_line(re.compile(r"listening admin=\W*([\w.:]+)"))
        yield Relay(daemon, upstream, path, f"http://{admin.group(1)}")
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
        await upstream.stop()


async def _swaks(port: int, *args: str) -> tuple[int, str]:
    return await run_peer(
        require("swaks"),
        "--server",
        f"127.0.0.1:{port}",
        "--from",
        "app@example.com",
        *args,
        within=30,
    )


async def _arrived(relay: Relay, subject: str, count: int) -> list[Received]:
    """What arrived of the message with ``subject``, once ``count`` recipients have it."""
    tag = f"Subject: {subject}\r\n".encode()

    def mine() -> list[Received]:
        return [m for m in relay.upstream.messages if tag in m.data]

    async with asyncio.timeout(15):
        while sum(len(m.recipients) for m in mine()) < count:
            await relay.upstream.wait_for(len(relay.upstream.messages) + 1)
    return mine()


def _rcpts(got: list[Received]) -> list[str]:
    return sorted(r for m in got for r in m.recipients)


def _queue_id(out: str) -> str:
    m = re.search(r"queued as (\S+)", out)
    assert m, out
    return m.group(1)


async def test_root_is_aliased_over_smtp_and_the_original_is_shown(relay: Relay) -> None:
    code, out = await _swaks(
        relay.daemon.port, "--to", "root@sluice.test", "--header", "Subject: alias-smtp"
    )
    assert code == 0, out
    qid = _queue_id(out)
    got = await _arrived(relay, "alias-smtp", 2)  # ops@, and the archive copy
    assert _rcpts(got) == ["archive@example.com", "ops@example.com"]
    rc, shown, err = await run_cli("queue", "show", qid, "-c", str(relay.config))
    assert rc == 0, err
    assert "<ops@example.com> (alias of root@sluice.test)" in shown
    assert "<archive@example.com> (archive copy (archive_bcc))" in shown
    async with httpx.AsyncClient() as client:
        page = await client.get(f"{relay.admin}/messages/{qid}")
        api = (await client.get(f"{relay.admin}/api/messages/{qid}")).json()
    assert page.status_code == 200
    ruled = {r["email"]: (r["rule"], r["original"]) for r in api["recipients"]}
    assert ruled == {
        "ops@example.com": ("alias", "root@sluice.test"),
        "archive@example.com": ("archive", ""),
    }
    assert "alias of root@sluice.test" in page.text
    assert "archive copy (archive_bcc)" in page.text


async def test_cron_mails_root_through_sluice_sendmail_and_gets_the_alias(relay: Relay) -> None:
    rc, _out, err = await run_cli(
        "sendmail",
        "-FCronDaemon",
        "-i",
        "root",
        "cron",  # cron@sluice.test: a local name with no alias
        stdin=b"Subject: alias-sendmail\n\nout\n",
        env={"SLUICE_CONFIG": str(relay.config)},
    )
    # One recipient refused (exit 67, EX_NOUSER) with the reason; root queued.
    assert rc == 67, err
    assert "<cron@sluice.test>: 550 5.1.1" in err
    assert "cron@sluice.test is a local name and has no alias" in err
    assert "queued for the other 1" in err
    got = await _arrived(relay, "alias-sendmail", 2)
    assert _rcpts(got) == ["archive@example.com", "ops@example.com"]


async def test_an_alias_key_that_is_an_address_expands_to_several(relay: Relay) -> None:
    code, out = await _swaks(
        relay.daemon.port, "--to", "cron@localhost", "--header", "Subject: alias-list"
    )
    assert code == 0, out
    got = await _arrived(relay, "alias-list", 3)
    assert _rcpts(got) == ["archive@example.com", "dev@example.com", "ops@example.com"]


async def test_a_bare_local_name_without_alias_is_refused_over_smtp(relay: Relay) -> None:
    code, out = await _swaks(relay.daemon.port, "--to", "nobody@localhost")
    assert code != 0, out
    assert "<** 550 5.1.1 <nobody@localhost>: nobody@localhost is a local name" in out
    assert "under aliases:" in out


async def test_redirect_rewrites_outside_recipients_and_allow_listed_ones_pass(
    relay: Relay,
) -> None:
    code, out = await _swaks(
        relay.daemon.port,
        "--to",
        "customer@gmail.com,dev@example.com,ops@eu.example.org,other@example.net",
        "--header",
        "Subject: redirect",
    )
    assert code == 0, out
    qid = _queue_id(out)
    got = await _arrived(relay, "redirect", 4)
    assert _rcpts(got) == [
        "archive@example.com",
        "dev@example.com",
        "ops@eu.example.org",
        "qa@example.com",
    ]
    for m in got:
        head = BytesHeaderParser().parsebytes(m.data)
        assert head[ORIGINAL_TO_HEADER] == "customer@gmail.com, other@example.net"
    rc, shown, _err = await run_cli("queue", "show", qid, "-c", str(relay.config))
    assert rc == 0
    assert "<qa@example.com> (redirected from customer@gmail.com, other@example.net)" in shown


async def test_headers_are_removed_and_added_as_the_upstream_sees_them(relay: Relay) -> None:
    code, out = await _swaks(
        relay.daemon.port,
        "--to",
        "dev@example.com",
        "--header",
        "Subject: headers",
        "--add-header",
        "X-Mailer: PHPMailer 6",
        "--add-header",
        "X-Internal-Tenant: 42",
        "--add-header",
        "X-Relay: app",
        "--add-header",
        "X-Kept: yes",
    )
    assert code == 0, out
    qid = _queue_id(out)
    got = await _arrived(relay, "headers", 2)
    for m in got:
        head = BytesHeaderParser().parsebytes(m.data)
        assert head["X-Mailer"] is None and head["X-Internal-Tenant"] is None
        assert head.get_all("X-Relay") == ["sluice"]
        assert head["X-Provider-Tag"] == "up1"
        assert head["X-Kept"] == "yes"
    # The stored copy is the app's.
    rc, raw, _err = await run_cli("queue", "show", qid, "--raw", "-c", str(relay.config))
    assert rc == 0
    assert "X-Mailer: PHPMailer 6" in raw and "X-Relay: app" in raw
    assert "X-Provider-Tag" not in raw


async def test_sendmail_with_the_daemon_down_applies_the_aliases_itself(
    tmp_path: Path,
) -> None:
    upstream = await TestUpstream().start()
    try:
        path = _config(tmp_path, upstream)
        # The spool exists (as after installation); the daemon is down.
        async with await Spool.open(tmp_path / "spool.sqlite3"):
            pass
        env = {"SLUICE_CONFIG": str(path)}
        rc, _out, err = await run_cli(
            "sendmail", "-v", "nobody", stdin=b"Subject: refused\n\nx\n", env=env
        )
        assert rc == 67, err
        assert "nobody@sluice.test is a local name and has no alias" in err
        assert "nothing was queued" in err
        rc, _out, err = await run_cli(
            "sendmail", "-v", "root", stdin=b"Subject: spooled\n\nx\n", env=env
        )
        assert rc == 0, err
        assert "queued as" in err
        daemon = await start_daemon(path)
        try:
            (got,) = await upstream.wait_for(1)
            assert got.recipients == ["ops@example.com"]
            assert b"Subject: spooled" in got.data
            qid = re.search(r"queued as (\S+)", err)
            assert qid
            rc, shown, _ = await run_cli("queue", "show", qid.group(1), "-c", str(path))
            assert "<ops@example.com> (alias of root@sluice.test)" in shown
        finally:
            assert await daemon.stop() == 0
    finally:
        await upstream.stop()


async def test_accept_workers_apply_the_aliases_too(tmp_path: Path) -> None:
    upstream = await TestUpstream().start()
    try:
        cfg = fast_config(tmp_path, [provider_for(upstream)], aliases=ALIASES)
        cfg["smtp"]["workers"] = 1
        daemon = await start_daemon(write_config(tmp_path / "sluice.yaml", cfg))
        try:
            code, out = await _swaks(daemon.port, "--to", "root@localhost")
            assert code == 0, out
            (got,) = await upstream.wait_for(1)
            assert got.recipients == ["ops@example.com"]
            code, out = await _swaks(daemon.port, "--to", "nobody@localhost")
            assert "<** 550 5.1.1 <nobody@localhost>" in out
        finally:
            assert await daemon.stop() == 0
    finally:
        await upstream.stop()


async def test_redirect_hold_keeps_staging_mail_held_across_a_reload_without_redirect(
    tmp_path: Path,
) -> None:
    """Acceptance-time, on purpose: removing redirect must not send queued mail to customers."""
    upstream = await TestUpstream().start()
    try:
        hold = {"action": "hold", "allow": ["example.com"]}
        path = _config(tmp_path, upstream, redirect=hold)
        daemon = await start_daemon(path)
        try:
            code, out = await _swaks(daemon.port, "--to", "customer@gmail.com,dev@example.com")
            assert code == 0, out
            qid = _queue_id(out)
            (got,) = await upstream.wait_for(1)
            assert got.recipients == ["dev@example.com"]
            _config(tmp_path, upstream)  # the same config without redirect
            rc, _out, err = await run_cli("reload", "-c", str(path))
            assert rc == 0, err
            await daemon.wait_line("configuration reloaded")
            rc, shown, _err = await run_cli("queue", "show", qid, "-c", str(path))
            assert rc == 0
            assert "<customer@gmail.com> (outside redirect.allow) held" in shown, shown
            assert "held by redirect: outside redirect.allow" in shown
            assert [m.recipients for m in upstream.messages] == [["dev@example.com"]]
        finally:
            assert await daemon.stop() == 0
    finally:
        await upstream.stop()


async def test_sluice_check_names_the_line_of_a_bad_rule(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "providers:\n  - id: p\n    host: h\naliases:\n  root: [admin]\nredirect:\n  to: qa\n",
        encoding="utf-8",
    )
    rc, _out, err = await run_cli("check", "-c", str(path))
    assert rc == 78, err
    assert f"{path}:5: aliases: root: 'admin' is a local name with no alias" in err
    assert f"{path}:7: redirect.to: 'qa' is not a full address" in err
