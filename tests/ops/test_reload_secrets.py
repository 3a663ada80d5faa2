"""A reload that adds a ``password_env`` provider, as an operator does it from a shell.

The variable is exported in the shell that runs ``sluice reload``, not in
the daemon's environment: the reload is refused with words that say why and
what to use instead, and the same provider disabled is accepted. Real daemon
process, real ``sluice reload`` subprocess.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import yaml

from tests.conftest import provider_for, smtp_send, write_config
from tests.daemon_proc import DaemonProcess, run_cli
from tests.upstream import TestUpstream

VAR = "SLUICE_TEST_SHELL_ONLY_PW"
MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: after\r\n\r\nbody\r\n"


def _with_spare(path: Path, up: TestUpstream, *, enabled: bool) -> None:
    cfg = yaml.safe_load(path.read_text())
    spare = provider_for(up, "spare", username="relay", password_env=VAR, enabled=enabled)
    cfg["providers"] = [cfg["providers"][0], spare]
    write_config(path, cfg)


async def test_reload_adding_a_password_env_provider_explains_the_daemons_environment(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    upstream2: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    daemon = await daemon_proc(path).start()  # started without the variable

    _with_spare(path, upstream2, enabled=True)
    rc, out, err = await run_cli("reload", "-c", str(path), env={VAR: "set-in-the-shell"})
    assert rc == 78, (out, err)
    assert "reload failed, still running the old configuration" in out
    assert f"providers.1.password_env: environment variable {VAR} is not set in the daemon's" in out
    assert "only the environment sluice was started with counts" in out
    assert "use password_file" in out and "systemd credential (LoadCredential=)" in out

    # Disabled, the same provider needs no secret: the reload is applied.
    _with_spare(path, upstream2, enabled=False)
    rc, out, err = await run_cli("reload", "-c", str(path))
    assert rc == 0, (out, err)
    assert "reloaded its configuration" in out
    await smtp_send(daemon.port, "a@example.org", ["b@example.net"], MSG)
    await upstream.wait_for(1)
    assert await daemon.stop() == 0
    # And `sluice check` (the unit's ExecStartPre) passes it too.
    rc, out, err = await run_cli("check", "-c", str(path))
    assert rc == 0, err
    assert out.strip().endswith("(2 providers, enabled: up1)")
