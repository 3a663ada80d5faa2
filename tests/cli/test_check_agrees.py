"""``sluice check`` refuses what ``sluice serve`` refuses, with the same ``FILE:LINE``.

The unit runs ``sluice check`` as ``ExecStartPre``: a config it passes and
``serve`` then refuses leaves the operator with a unit that fails to start
after the check said OK. Each case is a config ``serve`` refuses at start
without touching the network; both commands run as real subprocesses.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fast_config, write_config
from tests.daemon_proc import REPO, run_cli
from tests.peers import free_port


def _line_of(path: Path, fragment: str) -> int:
    (line,) = [n for n, t in enumerate(path.read_text().splitlines(), 1) if fragment in t]
    return line


async def _serve(path: Path, within: float = 30.0) -> tuple[int, str]:
    """Run ``sluice serve``; it must exit by itself within ``within`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "-c",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NOTIFY_SOCKET": ""},
        cwd=REPO,
    )
    try:
        async with asyncio.timeout(within):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"sluice serve did not refuse {path} within {within:g}s")
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _provider(**extra: Any) -> dict[str, Any]:
    # Nothing listens there: every case is refused before any connection.
    return {"id": "main", "host": "127.0.0.1", "port": free_port("127.0.0.1"), **extra}


def _open_admin(tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    port = free_port("0.0.0.0")
    cfg = fast_config(tmp_path, [_provider()], admin={"enabled": True, "listen": f"0.0.0.0:{port}"})
    return cfg, f"listen: 0.0.0.0:{port}", "admin.listen: 0.0.0.0:"


def _missing_ca_file(tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    ca = tmp_path / "no-such-ca.pem"
    cfg = fast_config(tmp_path, [_provider(encryption="starttls", ca_file=str(ca))])
    return cfg, "ca_file:", f"providers.0.ca_file: cannot load {ca}: No such file or directory"


def _ca_file_not_pem(tmp_path: Path) -> tuple[dict[str, Any], str, str]:
    ca = tmp_path / "ca.pem"
    ca.write_text("this is not a certificate\n")
    cfg = fast_config(tmp_path, [_provider(encryption="tls", port=465, ca_file=str(ca))])
    return cfg, "ca_file:", f"providers.0.ca_file: cannot load {ca}:"


@pytest.mark.parametrize("case", [_open_admin, _missing_ca_file, _ca_file_not_pem])
async def test_check_refuses_what_serve_refuses_with_the_same_line(
    tmp_path: Path, case: Any
) -> None:
    cfg, fragment, issue = case(tmp_path)
    path = write_config(tmp_path / "sluice.yaml", cfg)
    where = f"{path}:{_line_of(path, fragment)}: {issue}"

    rc, out, err = await run_cli("check", "-c", str(path))
    assert (rc, out) == (78, ""), (rc, out, err)
    assert f"sluice: {where}" in err, err

    rc, output = await _serve(path)
    assert rc == 78, output
    assert f"sluice: {where}" in output, output
    # Refused before anything opened: no spool, no listener.
    assert not (tmp_path / "spool.sqlite3").exists()
    assert "listening" not in output
