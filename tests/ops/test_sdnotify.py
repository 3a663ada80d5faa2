"""sd_notify against real AF_UNIX datagram sockets, in-process and from a daemon process."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.sdnotify import Notifier, monotonic_usec
from tests.conftest import provider_for
from tests.daemon_proc import DaemonProcess
from tests.upstream import TestUpstream


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path is limited to 108 bytes; pytest's tmp_path can be longer.
    d = Path(tempfile.mkdtemp(prefix="sn", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.setblocking(False)
    return sock


def _fields(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().splitlines())


async def _recv(sock: socket.socket, within: float = 15.0) -> dict[str, str]:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        return _fields(await loop.sock_recv(sock, 4096))


def test_path_socket(short_dir: Path) -> None:
    path = short_dir / "notify"
    sock = _listener(str(path))
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        assert n.enabled
        assert n.ready("accepting mail")
        assert _fields(sock.recv(4096)) == {"READY": "1", "STATUS": "accepting mail"}
        before = monotonic_usec()
        assert n.reloading()
        got = _fields(sock.recv(4096))
        assert got["RELOADING"] == "1"
        assert before <= int(got["MONOTONIC_USEC"]) <= monotonic_usec()
        assert n.stopping()
        assert _fields(sock.recv(4096)) == {"STOPPING": "1"}
        n.close()
    finally:
        sock.close()


def test_abstract_socket_and_newlines_in_values() -> None:
    name = f"sluice-test-{secrets.token_hex(6)}"
    sock = _listener(b"\0" + name.encode())
    try:
        n = Notifier(f"@{name}")
        assert n.status("line one\nline two")
        assert _fields(sock.recv(4096)) == {"STATUS": "line one line two"}
        n.close()
    finally:
        sock.close()


def test_disabled_and_vanished_socket_never_raise(short_dir: Path) -> None:
    off = Notifier.from_env({})
    assert not off.enabled and off.ready() is False
    gone = Notifier(str(short_dir / "nobody-listens"))
    started = time.monotonic()
    assert gone.ready() is False  # logged, not raised, and not blocking
    assert time.monotonic() - started < 1
    assert Notifier("vsock:2:1234").enabled is False


async def test_daemon_process_notifies_ready_reloading_stopping(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    name = f"sluice-test-{secrets.token_hex(6)}"
    sock = _listener(b"\0" + name.encode())
    try:
        path = ops_config([provider_for(upstream)])
        d = daemon_proc(path, env={"NOTIFY_SOCKET": f"@{name}"})
        await d.start(wait_listening=False)
        ready = await _recv(sock)
        assert ready["READY"] == "1"
        assert "accepting mail on 127.0.0.1:" in ready["STATUS"]
        # READY comes only once the listener accepts connections.
        port = int(ready["STATUS"].rsplit(":", 1)[1].split(";")[0])
        _r, w = await asyncio.open_connection("127.0.0.1", port)
        w.close()

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.send_signal(signal.SIGHUP)
        reloading = await _recv(sock)
        assert reloading["RELOADING"] == "1"
        assert int(reloading["MONOTONIC_USEC"]) >= before
        again = await _recv(sock)
        assert again["READY"] == "1"

        # A failed reload still ends with READY=1, and STATUS says what failed.
        path.write_text(path.read_text() + "bogus_section: 1\n")
        d.send_signal(signal.SIGHUP)
        assert (await _recv(sock))["RELOADING"] == "1"
        failed = await _recv(sock)
        assert failed["READY"] == "1"
        assert "last reload failed" in failed["STATUS"]
        assert "bogus_section: unknown key" in failed["STATUS"]

        d.send_signal(signal.SIGTERM)
        assert (await _recv(sock))["STOPPING"] == "1"
        assert await d.wait() == 0
    finally:
        sock.close()
    assert "NOTIFY_SOCKET" not in os.environ
