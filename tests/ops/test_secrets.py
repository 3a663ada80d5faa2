"""Secrets as an operator meets them: the shipped example under systemd credentials, the
CLI in a shell without the service's secrets, and empty secrets refused before anything runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import provider_for, smtp_send
from tests.daemon_proc import REPO, DaemonProcess, run_cli
from tests.peers import free_port
from tests.upstream import TestUpstream

EXAMPLE = REPO / "config.example.yaml"

#: a provider password only the daemon's environment holds (as with Environment= in the unit)
PROVIDER_PW_VAR = "SLUICE_TEST_PROVIDER_PW"
EMPTY_VAR = "SLUICE_TEST_EMPTY_SECRET"


def _line_of(path: Path, fragment: str) -> int:
    (line,) = [n for n, t in enumerate(path.read_text().splitlines(), 1) if fragment in t]
    return line


async def test_the_example_config_passes_check_with_the_units_credential(tmp_path: Path) -> None:
    # The unit's ExecStartPre runs `sluice check`; with LoadCredential=main:...
    # systemd hands it $CREDENTIALS_DIRECTORY holding a file named "main".
    assert "CREDENTIALS_DIRECTORY" not in os.environ
    config = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE, config)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "main").write_text("the-provider-password\n")
    rc, out, err = await run_cli(
        "check", "-c", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert rc == 0, err
    assert out.strip() == f"{config}: OK (1 provider, enabled: main)"

    rc, out, err = await run_cli("check", "-c", str(config))
    assert rc == 78 and out == ""
    line = _line_of(config, "- id: main")
    (issue,) = err.splitlines()
    assert issue.startswith(f"sluice: {config}:{line}: providers.0.password: provider main has no")
    assert "give password_env or password_file" in issue
    assert "LoadCredential=main:/etc/sluice/credentials/main" in issue
    assert "$CREDENTIALS_DIRECTORY is not set" in issue

    # An empty credential file is no password either.
    (creds / "main").write_text("")
    rc, _, err = await run_cli(
        "check", "-c", str(config), env={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert rc == 78
    assert f"{config}:{line}: providers.0.password: {creds / 'main'} is empty" in err


def test_unit_readme_and_example_name_the_same_credential() -> None:
    unit = (REPO / "systemd" / "sluice.service").read_text()
    readme = (REPO / "docs" / "operating.md").read_text()  # where the install steps are
    example = EXAMPLE.read_text()
    line = "LoadCredential=main:/etc/sluice/credentials/main"
    assert f"#{line}" in unit and line in readme and line in example
    assert "smtp-main" not in unit + readme + example
    assert "- id: main" in example and not re.search(r"^\s+password(_env|_file)?:", example, re.M)
    # The directory the credential lives in is made by the shipped tmpfiles.d entry.
    tmpfiles = (REPO / "systemd" / "sluice.tmpfiles").read_text()
    assert re.search(r"^d /etc/sluice/credentials\s+0700 root\s+root", tmpfiles, re.M)


async def test_queue_and_providers_list_need_no_secret_the_shell_lacks(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    assert PROVIDER_PW_VAR not in os.environ
    upstream.users = {"relay": "daemon-only-pw"}
    upstream.reply["RCPT"] = "451 4.2.0 Not now"
    provider = provider_for(
        upstream, username="relay", password_env=PROVIDER_PW_VAR, allow_insecure_auth=True
    )
    path = ops_config([provider], retry={"first_delay": "1h", "max_delay": "1h"})
    daemon = await daemon_proc(path, env={PROVIDER_PW_VAR: "daemon-only-pw"}).start()
    _, reply = await smtp_send(
        daemon.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nb\r\n"
    )
    qid = reply.rsplit(" ", 1)[-1]
    await daemon.wait_line("451 4.2.0 Not now")
    cfg = str(path)

    rc, out, err = await run_cli("queue", "list", "-c", cfg)
    assert rc == 0, err
    assert qid in out and "deferred" in out
    rc, out, err = await run_cli("queue", "show", qid, "-c", cfg)
    assert rc == 0 and "via up1" in out, err
    rc, out, err = await run_cli("providers", "list", "-c", cfg)
    assert rc == 0, err
    assert f"relay / •••••• (${PROVIDER_PW_VAR})" in out
    rc, out, err = await run_cli("queue", "retry", qid, "-c", cfg)
    assert rc == 0 and "1 recipient due now" in out, err
    rc, out, err = await run_cli("queue", "delete", qid, "-c", cfg)
    assert rc == 0 and f"{qid}: deleted" in out, err

    # What connects to the provider (or checks the service's config) still needs it,
    # and says which key of which line.
    line = _line_of(path, f"password_env: {PROVIDER_PW_VAR}")
    key = "providers.0.password_env"
    expected = f"{path}:{line}: {key}: environment variable {PROVIDER_PW_VAR} is not set"
    for command in (("check",), ("providers", "test", "up1")):
        rc, out, err = await run_cli(*command, "-c", cfg)
        assert rc == 78, (command, out, err)
        assert expected in err, (command, err)
    assert "daemon-only-pw" not in daemon.output
    assert await daemon.stop() == 0


@pytest.mark.parametrize("where", ["env", "file"])
async def test_check_refuses_an_empty_admin_password(
    tmp_path: Path, ops_config: Callable[..., Path], upstream: TestUpstream, where: str
) -> None:
    empty = tmp_path / "admin-password"
    empty.write_text("")
    admin = {"enabled": True, "listen": "0.0.0.0:8025"}
    admin |= {"password_env": EMPTY_VAR} if where == "env" else {"password_file": str(empty)}
    path = ops_config([provider_for(upstream)], admin=admin)
    rc, out, err = await run_cli("check", "-c", str(path), env={EMPTY_VAR: ""})
    assert rc == 78 and out == "", err
    key = f"password_{where}"
    line = _line_of(path, f"{key}: ")
    what = f"environment variable {EMPTY_VAR}" if where == "env" else str(empty)
    assert f"sluice: {path}:{line}: admin.{key}: {what} is empty" in err


async def test_serve_with_an_empty_admin_password_never_serves_the_admin(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    port = free_port("0.0.0.0")
    admin = {"enabled": True, "listen": f"0.0.0.0:{port}", "password_env": EMPTY_VAR}
    path = ops_config([provider_for(upstream)], admin=admin)
    refused = daemon_proc(path, env={EMPTY_VAR: ""})
    await refused.start(wait_listening=False)
    assert await refused.wait() == 78
    line = _line_of(path, "password_env: ")
    assert f"{path}:{line}: admin.password_env: environment variable {EMPTY_VAR} is empty" in (
        refused.output
    )
    assert "listening" not in refused.output
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()

    # The same config with a password set serves the admin, and it asks for it:
    # proof that the refusal above is the empty password, not the address.
    served = await daemon_proc(path, env={EMPTY_VAR: "admin-Pa55"}).start()
    await served.wait_line(f"listening admin=0.0.0.0:{port}")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/api/queue")).status_code == 401
        assert (await client.post("/api/reload")).status_code in (401, 403)
        assert (await client.get("/api/queue", auth=("admin", "admin-Pa55"))).status_code == 200
    assert await served.stop() == 0
    assert "admin-Pa55" not in served.output


async def test_the_open_admin_warning_reaches_the_log_as_written(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)], admin={"enabled": True, "listen": "127.0.0.1:0"})
    daemon = await daemon_proc(path).start()
    match = await daemon.wait_line(re.compile(r"has no password: (\S+ \S+ \S+ \S+)"))
    assert match.group(1) == "anyone on this machine"
    assert await daemon.stop() == 0
