"""``sluice providers add|edit|disable|remove`` against a running daemon and a real Postfix.

The provider is a private Postfix with Dovecot SASL (tests/peers.py): a wrong
password is refused with Postfix's own answer and nothing is written; the
right one is saved (0600 secret file, ``password_file`` in the YAML, every
original comment in place), the daemon reloads and ``providers list`` shows
it; the typed password appears in neither the YAML, the daemon's log nor the
audit log. Disabling the last enabled provider is refused with the reason.
One daemon and one Postfix serve the whole module.
"""

from __future__ import annotations

import difflib
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import trustme
import yaml

from relay.config_edit import digest_of
from relay.store.node_status import read_status
from relay.store.spool import Spool
from tests.conftest import fast_config
from tests.daemon_proc import DaemonProcess, run_cli, start_daemon
from tests.peers import PostfixSasl, postfix_sasl

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

PASSWORD = "Kx7-distinctive-Relay-Pw-4419"
WRONG = "wrong-Relay-Pw-0000"
HEADER = "# Sluice for the edit tests: every comment here must survive the edits\n"


@pytest.fixture(scope="module")
def module_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("providers-edit")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def postfix(module_ca: trustme.CA, base: Path) -> AsyncIterator[PostfixSasl]:
    cert = module_ca.issue_cert("127.0.0.1", "localhost")
    chain, key = base / "pf-cert.pem", base / "pf-key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    async with postfix_sasl(chain, key, {"relay": PASSWORD}) as pf:
        yield pf


def _commented(cfg: dict[str, object]) -> str:
    """The config as an operator writes it: comments before sections, at line ends, inside."""
    body = yaml.safe_dump(cfg, sort_keys=False)
    lines = []
    for line in body.splitlines():
        if line and not line.startswith(" "):
            lines.append(f"# section {line.rstrip(':')}")
        if line.strip().startswith("host:"):
            line += "   # where it sends"
        lines.append(line)
    return HEADER + "\n".join(lines) + "\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(base: Path) -> AsyncIterator[DaemonProcess]:
    cfg = fast_config(
        base,
        [{"id": "sink", "host": "127.0.0.1", "port": 9, "encryption": "none"}],
    )
    path = base / "sluice.yaml"
    path.write_text(_commented(cfg))
    d = await start_daemon(path)
    try:
        yield d
    finally:
        await d.stop()


async def _providers(daemon: DaemonProcess, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    return await run_cli("providers", *args, "-c", str(daemon.config_path), stdin=stdin)


async def test_add_with_a_wrong_then_the_right_password(
    daemon: DaemonProcess, postfix: PostfixSasl, module_ca: trustme.CA, base: Path
) -> None:
    ca = base / "ca.pem"
    module_ca.cert_pem.write_to_path(str(ca))
    before = daemon.config_path.read_text()
    flags = [
        "add",
        "pf",
        "--from-preset",
        "smtp",
        "--host",
        postfix.host,
        "--port",
        str(postfix.port),
        "--username",
        "relay",
        "--ca-file",
        str(ca),
        "--daily-limit",
        "500",
        "--password-stdin",
    ]
    rc, out, err = await _providers(daemon, *flags, stdin=WRONG.encode() + b"\n")
    assert rc == 65, (out, err)
    # Postfix's own answer, on the password flag.
    assert "--password-stdin/--password-file: the server answered: AUTH: 535" in err
    assert daemon.config_path.read_text() == before
    assert not (base / "secrets").exists() or not any((base / "secrets").iterdir())

    rc, out, err = await _providers(daemon, *flags, stdin=PASSWORD.encode() + b"\n")
    assert rc == 0, (out, err)
    assert "the daemon reloaded it" in out
    after = daemon.config_path.read_text()
    # Only the new block was added: every original line, comments included, is kept.
    removed = [
        line
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="")
        if line.startswith("-") and not line.startswith("---")
    ]
    assert removed == []
    assert after.startswith(HEADER)
    secret = base / "secrets" / "provider-pf-password"
    assert secret.read_text() == PASSWORD
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert f"password_file: {secret}" in after
    # The daemon runs the new file: its digest is the file's.
    spool_path = base / "spool.sqlite3"
    assert read_status(spool_path, "daemon.config_sha256") == digest_of(
        daemon.config_path.read_bytes()
    )
    rc, out, _ = await run_cli("providers", "list", "--json", "-c", str(daemon.config_path))
    rows = {r["id"]: r for r in json.loads(out)}
    assert rows["pf"]["daily_limit"] == 500 and rows["pf"]["enabled"]

    # Edit the limit: no restart, the list shows it.
    rc, out, err = await _providers(daemon, "edit", "pf", "--daily-limit", "750")
    assert rc == 0, (out, err)
    assert "daily_limit: 750" in daemon.config_path.read_text()
    rc, out, _ = await run_cli("providers", "list", "--json", "-c", str(daemon.config_path))
    assert {r["id"]: r for r in json.loads(out)}["pf"]["daily_limit"] == 750

    # The typed passwords are nowhere but in the secret file.
    for text in (daemon.config_path.read_text(), daemon.output):
        assert PASSWORD not in text and WRONG not in text
    async with await Spool.open(spool_path) as spool:
        audit = await spool.audit_log()
    assert [e.target for e in audit][:2] == ["provider pf", "provider pf"]
    assert all(PASSWORD not in e.detail and WRONG not in e.detail for e in audit)


async def test_the_last_enabled_provider_cannot_be_disabled(daemon: DaemonProcess) -> None:
    rc, out, err = await _providers(daemon, "disable", "sink")
    if "pf" in daemon.config_path.read_text():
        assert rc == 0, (out, err)  # pf is enabled: sink may go
        rc, out, err = await _providers(daemon, "disable", "pf")
    before = daemon.config_path.read_text()
    assert rc == 65
    assert "is the only enabled provider" in err
    assert daemon.config_path.read_text() == before
