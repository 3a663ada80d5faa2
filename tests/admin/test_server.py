"""The admin served by the daemon itself: real port, start-up refusal, signals, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from admin.server import IDLE_TIMEOUT, MAX_CONNECTIONS, REQUEST_WITHIN
from relay.errors import ConfigError
from tests.conftest import SluiceFactory, fast_config, provider_for, write_config
from tests.daemon_proc import start_daemon
from tests.upstream import TestUpstream


async def test_daemon_serves_admin_on_its_own_loop(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    async with sluice(
        [provider_for(upstream)], admin={"enabled": True, "listen": "127.0.0.1:0"}
    ) as s:
        assert s.daemon.admin is not None
        host, port = s.daemon.admin.address
        assert host == "127.0.0.1" and port > 0
        assert f"listening admin=127.0.0.1:{port}" in caplog.text
        assert "has no password" in caplog.text
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.get("/healthz")
            assert r.status_code == 200 and r.json()["ok"] is True
            page = await c.get("/queue")
            assert page.status_code == 200 and "Queue" in page.text
            assert "server" not in page.headers  # no version banner
        # uvicorn did not take the daemon's signals.
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    # Stopped with the daemon: the port is closed.
    with pytest.raises(OSError):
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()


async def test_refuses_open_admin_on_a_non_loopback_address(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        async with sluice([provider_for(upstream)], admin={"enabled": True, "listen": "0.0.0.0:0"}):
            pass
    assert "not a loopback address and no admin password" in str(info.value)
    assert not (tmp_path / "spool.sqlite3").exists()  # refused before anything opened
    # With a password the same address is fine.
    (tmp_path / "pw").write_text("pw\n")
    admin = {"enabled": True, "listen": "0.0.0.0:0", "password_file": str(tmp_path / "pw")}
    async with sluice([provider_for(upstream)], admin=admin) as s:
        assert s.daemon.admin is not None
        port = s.daemon.admin.address.port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.get("/api/queue")).status_code == 401
            assert (await c.get("/api/queue", auth=("admin", "pw"))).status_code == 200


@pytest.mark.slow
async def test_sigterm_stops_a_daemon_serving_the_admin(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    cfg = fast_config(
        tmp_path, [provider_for(upstream)], admin={"enabled": True, "listen": "127.0.0.1:0"}
    )
    proc = await start_daemon(write_config(tmp_path / "sluice.yaml", cfg))
    try:
        match = await proc.wait_line(re.compile(r"listening admin=127\.0\.0\.1:(\d+)"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{match.group(1)}") as c:
            # A keep-alive connection stays open while we stop the daemon.
            assert (await c.get("/healthz")).status_code == 200
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    finally:
        await proc.kill()
    assert "stopped" in proc.output


async def test_healthz_answers_while_400_idle_connections_are_open(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    """400 connections that never send a request cannot keep ``/healthz`` from answering.

    The daemon's open-file limit is lowered to 150 more than it uses, as on a
    host with a tight ``LimitNOFILE``: before, uvicorn held every idle
    connection, accepting failed at the limit and ``/healthz`` got no answer.
    Now idle ones are closed past ``MAX_CONNECTIONS``, and any that stays silent
    is closed after ``IDLE_TIMEOUT``, one trickling a request head after ``REQUEST_WITHIN``.
    """
    cfg = fast_config(
        tmp_path, [provider_for(upstream)], admin={"enabled": True, "listen": "127.0.0.1:0"}
    )
    proc = await start_daemon(write_config(tmp_path / "sluice.yaml", cfg))
    writers: list[asyncio.StreamWriter] = []
    try:
        assert proc.proc is not None
        pid = proc.proc.pid
        port = int((await proc.wait_line(re.compile(r"listening admin=127\.0\.0\.1:(\d+)")))[1])
        in_use = len(os.listdir(f"/proc/{pid}/fd"))
        hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use + 150, hard))
        readers = []
        for _ in range(400):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            readers.append(reader)
            writers.append(writer)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as c:
            r = await c.get("/healthz")
        assert r.status_code in (200, 503), r.text
        # The daemon holds a bounded number of them, not 400.
        assert len(os.listdir(f"/proc/{pid}/fd")) <= in_use + MAX_CONNECTIONS + 5
        # A client trickling a request head is closed REQUEST_WITHIN after it connected.
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(slow_w)
        slow_w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # The newest idle ones it still holds are closed once silent for IDLE_TIMEOUT.
        async with asyncio.timeout(IDLE_TIMEOUT + 5):
            assert await readers[-1].read() == b""
        async with asyncio.timeout(REQUEST_WITHIN + 5):
            while not slow_r.at_eof():
                slow_w.write(b"X")  # a byte every second: each one is seen, none is enough
                with contextlib.suppress(TimeoutError, ConnectionError):
                    await asyncio.wait_for(slow_r.read(1), 1.0)
        assert "Traceback" not in proc.output
    finally:
        for writer in writers:
            writer.close()
        await proc.kill()


def test_hash_password_command_prints_a_verifiable_hash() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "relay.cli", "admin", "hash-password"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    hashed = out.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "correct horse")
    empty = subprocess.run(
        [sys.executable, "-m", "relay.cli", "admin", "hash-password"],
        input="\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert empty.returncode == 64 and "empty password" in empty.stderr
