"""A port already in use, and ``sluice demo`` on other ports, as real processes.

8025 (the admin's default) is also Mailpit's and MailHog's: something may
well hold it. The daemon must then exit with one line naming the address and
what to change, exit 69 (EX_UNAVAILABLE, which the unit does not restart),
never a traceback. The demo takes ``--smtp-port``/``--admin-port``/
``--sink-port``; 0 picks free ports and the ones in use are printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.conftest import fast_config, provider_for, smtp_send, write_config
from tests.daemon_proc import REPO, run_cli
from tests.upstream import TestUpstream

pytestmark = pytest.mark.slow

BANNER = re.compile(r"Sluice demo: send mail to 127\.0\.0\.1:(\d+); .*\(127\.0\.0\.1:(\d+)\)")
ADMIN = re.compile(r"Admin page: http://127\.0\.0\.1:(\d+)/")


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by another program (a listening socket of this test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def _one_line(err: str) -> str:
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("sluice: ")]
    assert len(lines) == 1, err
    return lines[0]


async def test_busy_admin_port_is_one_line_and_exit_69(
    tmp_path: Path, upstream: TestUpstream, busy_port: int
) -> None:
    path = write_config(
        tmp_path / "sluice.yaml",
        fast_config(
            tmp_path,
            [provider_for(upstream)],
            admin={"enabled": True, "listen": f"127.0.0.1:{busy_port}"},
        ),
    )
    rc, _out, err = await run_cli("serve", "-c", str(path))
    assert rc == 69, err
    line = _one_line(err)
    assert f"cannot listen on 127.0.0.1:{busy_port} (admin.listen)" in line
    assert "Address already in use" in line
    assert f"change admin.listen in {path}" in line


async def test_busy_smtp_port_is_one_line_and_exit_69(
    tmp_path: Path, upstream: TestUpstream, busy_port: int
) -> None:
    path = write_config(
        tmp_path / "sluice.yaml",
        fast_config(
            tmp_path, [provider_for(upstream)], smtp={"listen": [f"127.0.0.1:{busy_port}"]}
        ),
    )
    rc, _out, err = await run_cli("serve", "-c", str(path))
    assert rc == 69, err
    line = _one_line(err)
    assert f"cannot listen on 127.0.0.1:{busy_port} (smtp.listen)" in line
    assert f"change smtp.listen in {path}" in line


def test_the_unit_does_not_restart_into_a_busy_port() -> None:
    unit = (REPO / "systemd" / "sluice.service").read_text()
    assert "\nRestartPreventExitStatus=78 69\n" in unit


class Demo:
    """``sluice demo`` as a process, its stdout and stderr collected line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name="demo-output")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    async def wait_line(self, pattern: re.Pattern[str], within: float = 30.0) -> re.Match[str]:
        async with asyncio.timeout(within), self._changed:
            while True:
                for line in self.lines:
                    if m := pattern.search(line):
                        return m
                if self._reader.done():
                    raise AssertionError(f"demo exited without {pattern.pattern!r}:\n{self.out}")
                await self._changed.wait()

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    async def wait(self, within: float = 30.0) -> int:
        async with asyncio.timeout(within):
            rc = await self.proc.wait()
            await self._reader
        return rc


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "relay.cli", "demo", "--dir", str(tmp_path / "var")),
        *("--smtp-port", "0", "--admin-port", "0", "--sink-port", "0"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
        start_new_session=True,
    )
    d = Demo(proc)
    try:
        yield d
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        d._reader.cancel()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_demo_on_free_ports_prints_them_and_relays_there(demo: Demo, tmp_path: Path) -> None:
    banner = await demo.wait_line(BANNER)
    smtp_port, sink_port = int(banner.group(1)), int(banner.group(2))
    admin_port = int((await demo.wait_line(ADMIN)).group(1))
    assert 0 not in (smtp_port, sink_port, admin_port)
    assert len({smtp_port, sink_port, admin_port, 2525, 2526, 8025}) == 6

    await smtp_send(smtp_port, "app@example.org", ["you@example.net"], b"Subject: hi\r\n\r\nx\r\n")
    await demo.wait_line(re.compile(r"\[sink\] from=<app@example\.org> .*subject='hi'"))
    await demo.wait_line(re.compile(r"to=<you@example\.net> provider=demo-sink status=sent"))
    # The admin page answers on the port it printed.
    reader, writer = await asyncio.open_connection("127.0.0.1", admin_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 ")

    # Mail on disk is for its owner (and group) only: spool, WAL, SHM, locks, config.
    var = tmp_path / "var"
    spool_files = [var / f"spool.sqlite3{s}" for s in ("", "-wal", "-shm", ".lock", "-writelock")]
    for f in spool_files:
        assert _mode(f) & 0o007 == 0, f"{f.name} is {oct(_mode(f))}"
    assert _mode(var / "demo.yaml") == 0o600
    assert _mode(var) & 0o007 == 0

    demo.proc.send_signal(signal.SIGINT)
    assert await demo.wait() == 0, demo.out
    for f in var.iterdir():
        assert _mode(f) & 0o007 == 0, f"{f.name} is {oct(_mode(f))} after the run"


async def test_demo_with_a_busy_admin_port_names_the_flag(tmp_path: Path, busy_port: int) -> None:
    rc, _out, err = await run_cli(
        "demo", "--dir", str(tmp_path / "var"), "--smtp-port", "0", "--sink-port", "0",
        "--admin-port", str(busy_port),
    )  # fmt: skip
    assert rc == 69, err
    line = _one_line(err)
    assert f"cannot listen on 127.0.0.1:{busy_port} (admin.listen)" in line
    assert "sluice demo --admin-port PORT" in line and "0 picks a free port" in line


async def test_demo_with_a_busy_sink_port_names_the_flag(tmp_path: Path, busy_port: int) -> None:
    rc, _out, err = await run_cli(
        "demo", "--dir", str(tmp_path / "var"), "--sink-port", str(busy_port)
    )
    assert rc == 69, err
    assert "sluice demo --sink-port PORT" in _one_line(err)


async def test_demo_port_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    rc, _out, err = await run_cli("demo", "--dir", str(tmp_path), "--smtp-port", "70000")
    assert rc == 64
    assert "--smtp-port: 70000 is out of range (0-65535)" in err
