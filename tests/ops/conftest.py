"""Fixtures for operations tests: Sluice as a real subprocess, its CLI, its config."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fast_config, write_config
from tests.daemon_proc import REPO, DaemonProcess

DaemonFactory = Callable[..., Any]


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


async def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None, argv0: str | None = None
) -> tuple[int, str, str]:
    """Run ``python -m relay.cli ARGS`` (or the executable ``argv0``); (rc, stdout, stderr)."""
    cmd = [argv0, *args] if argv0 else [sys.executable, "-m", "relay.cli", *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
