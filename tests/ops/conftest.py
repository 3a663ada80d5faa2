"""Fixtures for operations tests: Sluice as a real subprocess, its CLI, its config."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fast_config, provider_for, write_config
from tests.daemon_proc import DaemonProcess
from tests.upstream import TestUpstream

#: an environment variable only the daemon has, not the shell of the CLI under test
DAEMON_ONLY_SECRET = "SLUICE_TEST_ADMIN_PW"


@pytest.fixture
async def daemon_proc() -> AsyncIterator[Callable[..., DaemonProcess]]:
    """``daemon_proc(config_path, env={...})`` makes a subprocess daemon; all are killed after."""
    made: list[DaemonProcess] = []

    def make(config_path: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        d = DaemonProcess(config_path, env)
        made.append(d)
        return d

    yield make
    for d in made:
        await d.kill()


@pytest.fixture
def ops_config(tmp_path: Path) -> Callable[..., Path]:
    """``ops_config(providers, **sections)`` writes a fast test config, returns its path."""

    def make(providers: list[dict[str, Any]], name: str = "sluice.yaml", **sections: Any) -> Path:
        cfg = fast_config(tmp_path, providers, **sections)
        return write_config(tmp_path / name, cfg)

    return make


@pytest.fixture
async def daemon_with_own_secret(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> tuple[Path, DaemonProcess]:
    """A running daemon whose config needs a secret that only its own environment has.

    As with ``Environment=`` or ``LoadCredential=`` in the unit: the shell
    that runs ``sluice reload`` or ``sluice sendmail`` (cron, PHP) lacks it.
    """
    assert DAEMON_ONLY_SECRET not in os.environ
    path = ops_config(
        [provider_for(upstream)], admin={"enabled": False, "password_env": DAEMON_ONLY_SECRET}
    )
    daemon = await daemon_proc(path, env={DAEMON_ONLY_SECRET: "daemon-only"}).start()
    return path, daemon
