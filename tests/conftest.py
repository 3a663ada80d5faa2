"""Shared fixtures: real upstreams, a real in-process Sluice, an SMTP client."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from relay.config import Config, SpoolSettings, load
from relay.daemon import Daemon
from relay.model import RecipientStatus
from relay.store.spool import Spool
from tests.pg import PgCluster, PgDatabase, start_cluster, stop_cluster
from tests.upstream import TestUpstream

#: how pytest-xdist's workers share the suite, and what they can send back
pytest_plugins = ("tests.workers",)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster per test session (per xdist worker), made on first use."""
    cluster = start_cluster()
    yield cluster
    stop_cluster(cluster)


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> PgDatabase:
    """An empty database of its own for this test."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def spool_where(request: pytest.FixtureRequest, tmp_path: Path) -> Path | SpoolSettings:
    """Where a store test opens its spool: each test runs on both backends (#27).

    ``Spool.open(spool_where)``: a SQLite file, or a fresh PostgreSQL database
    with the node's state directory in ``tmp_path``.
    """
    if request.param == "sqlite":
        return tmp_path / "spool.sqlite3"
    db: PgDatabase = request.getfixturevalue("pg_db")
    return db.settings(tmp_path / "spool.sqlite3")


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    up = await TestUpstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def upstream2() -> AsyncIterator[TestUpstream]:
    up = await TestUpstream().start()
    yield up
    await up.stop()


def provider_for(up: TestUpstream, pid: str = "up1", **extra: Any) -> dict[str, Any]:
    """A provider entry pointing at a test upstream (plain SMTP unless overridden)."""
    return {"id": pid, "host": up.host, "port": up.port, "encryption": "none", **extra}


def fast_config(tmp_path: Path, providers: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    """A config dict for tests: port 0, spool in tmp_path, short timers."""
    cfg: dict[str, Any] = {
        # workers 0: the listener in the test's own process, where tests can
        # look at it; tests/inbound/test_acceptors.py covers workers.
        "smtp": {"listen": ["127.0.0.1:0"], "hostname": "sluice.test", "workers": 0},
        "spool": {"path": str(tmp_path / "spool.sqlite3")},
        "retry": {"first_delay": "1s", "max_delay": "2s", "jitter": 0},
        "delivery": {
            "poll_interval": "0.2s",
            "connect_timeout": "3s",
            "command_timeout": "3s",
            "data_timeout": "3s",
            "shutdown_grace": "2s",
        },
        "admin": {"enabled": False},
        "providers": providers,
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(section), dict):
            cfg[section] = {**cfg[section], **values}
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Running:
    daemon: Daemon
    config_path: Path

    @property
    def port(self) -> int:
        assert self.daemon.listener is not None
        return self.daemon.listener.addresses[0].port

    @property
    def spool(self) -> Spool:
        assert self.daemon.spool is not None
        return self.daemon.spool

    async def wait_idle(self, within: float = 15.0) -> None:
        """Wait until nothing is due and nothing is in flight."""
        assert self.daemon.scheduler is not None
        async with asyncio.timeout(within):
            while True:
                await self.daemon.scheduler.idle.wait()
                counts = await self.spool.counts_by_status()
                if not counts[RecipientStatus.QUEUED] and not counts[RecipientStatus.SENDING]:
                    return
                await asyncio.sleep(0.05)


SluiceFactory = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def sluice(tmp_path: Path) -> SluiceFactory:
    """``async with sluice(providers=[...], **sections) as s:`` runs Sluice in-process."""

    @asynccontextmanager
    async def start(providers: list[dict[str, Any]], **sections: Any) -> AsyncIterator[Running]:
        path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, providers, **sections))
        cfg: Config = load(path)
        daemon = Daemon(cfg, config_path=path)
        async with daemon.running():
            yield Running(daemon, path)

    return start


async def smtp_send(
    port: int,
    sender: str,
    recipients: list[str],
    data: bytes,
    *,
    host: str = "127.0.0.1",
) -> tuple[dict[str, Any], str]:
    """Send one message with aiosmtplib; returns (refused recipients, DATA reply)."""
    import aiosmtplib

    async with aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10) as client:
        refused, reply = await client.sendmail(sender, recipients, data)
    return dict(refused), reply


async def raw_session(port: int, lines: list[bytes], *, host: str = "127.0.0.1") -> list[str]:
    """Speak raw SMTP: send each chunk after reading one reply; return every reply.

    A chunk may hold several lines (e.g. a whole DATA payload); replies are
    read until a line whose fourth character is a space.
    """
    reader, writer = await asyncio.open_connection(host, port)
    replies = []

    async def read_reply() -> str:
        text: list[str] = []
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            if not line:
                return "".join(text) or "<closed>"
            text.append(line.decode())
            if len(line) < 4 or line[3:4] == b" ":
                return "".join(text).strip()

    try:
        replies.append(await read_reply())
        for chunk in lines:
            writer.write(chunk)
            await writer.drain()
            replies.append(await read_reply())
    finally:
        writer.close()
    return replies


async def eventually(
    check: Callable[[], Any], *, within: float = 15.0, interval: float = 0.02
) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value, with a deadline."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(interval)


# TLS for test servers (trustme): one CA per session, its certificate as a file.


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx
