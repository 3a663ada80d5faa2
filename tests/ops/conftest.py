"""Fixtures for operations tests: Sluice as a real subprocess, its CLI, its config."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fast_config, write_config
from tests.daemon_proc import DaemonProcess


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
