"""The sink and Sluice as subprocesses, each driven through its pipes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "SinkProcess", "SluiceProcess", "smtp_ready", "write_sluice_config"]

_LISTENING = re.compile(r"listening smtp=(\S+):(\d+)")
_ADMIN = re.compile(r"listening admin=(\S+):(\d+)")
#: the repository: where ``python -m relay`` and ``python -m bench`` run from
ROOT = Path(__file__).resolve().parent.parent


class SinkProcess:
    """``python -m bench.sink`` in its own process (its CPU is not Sluice's)."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    @classmethod
    async def start(cls, *, held: bool = False) -> SinkProcess:
        args = [sys.executable, "-m", "bench.sink"] + (["--held"] if held else [])
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT
        )
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        if not line.startswith("listening "):
            proc.kill()
            raise RuntimeError(f"sink did not start: {line!r}")
        return cls(proc, int(line.split()[1]))

    async def command(self, cmd: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(60):
            return (await self.proc.stdout.readline()).decode().strip()

    async def count(self) -> int:
        return int((await self.command("count")).split()[1])

    async def dump(self, path: Path) -> dict[str, Any]:
        await self.command(f"dump {path}")
        data: dict[str, Any] = json.loads(await asyncio.to_thread(path.read_text))
        return data

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(OSError, ConnectionError):
                await self.command("quit")
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def write_sluice_config(
    path: Path,
    *,
    sink_port: int,
    spool: Path,
    connections: int = 20,
    workers: str = "auto",
    extra_delivery: dict[str, str] | None = None,
    log_level: str = "info",
    admin: bool = False,
    smtp_lines: list[str] | None = None,
    spool_url: str | None = None,
) -> None:
    # Limits like the compared Postfix's: ``connections`` to the one
    # destination (its default_destination_concurrency_limit) under a global
    # cap of 100 deliveries in flight (it runs with default_process_limit 200).
    delivery = {"max_concurrent": str(max(100, connections)), **(extra_delivery or {})}
    lines = [
        "smtp:",
        *(smtp_lines or ['  listen: ["127.0.0.1:0"]']),
        "  hostname: sluice.bench.invalid",
        "  max_message_size: 200MiB",
        f"  workers: {workers}",
        "spool:",
        f"  path: {json.dumps(str(spool))}",
        # PostgreSQL (``bench run --spool postgresql``): ``path``'s folder stays
        # the node's local state (pid file, locks).
        *([f"  url: {json.dumps(spool_url)}"] if spool_url else []),
        "delivery:",
        *(f"  {k}: {v}" for k, v in delivery.items()),
        "log:",
        f"  level: {log_level}",
        "admin:",
        *(["  enabled: true", '  listen: "127.0.0.1:0"'] if admin else ["  enabled: false"]),
        "providers:",
        "  - id: sink",
        "    host: 127.0.0.1",
        f"    port: {sink_port}",
        "    encryption: none",
        f"    max_connections: {connections}",
    ]
    path.write_text("\n".join(lines) + "\n")


class SluiceProcess:
    """``sluice serve`` as a subprocess, its log written to a file as Postfix's is.

    The log goes to ``<config>.log``, not to a pipe read line by line: a
    Python reader woken for every line (two per message) cost CPU on the
    same cores as the relays, which the compared Postfix (``maillog_file``,
    read by nobody during the run) does not pay. The file is read in
    batches, every 50 ms, for the listening lines, the warnings and the tail.
    """

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self.port = 0
        self.admin_port = 0
        self.tail: deque[str] = deque(maxlen=2000)
        #: every WARNING/ERROR line (the tail alone loses early ones), bounded
        self.warnings: deque[str] = deque(maxlen=200)
        self._listening = asyncio.Event()
        self._pump = asyncio.create_task(self._read(), name="sluice-log")

    @classmethod
    async def start(
        cls, config: Path, *, within: float = 60.0, env: dict[str, str] | None = None
    ) -> SluiceProcess:
        log_path = config.with_suffix(".log")
        with log_path.open("wb") as log_file:  # the child keeps its own descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.cli",
                "serve",
                "-c",
                str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        sluice = cls(proc, log_path)
        try:
            async with asyncio.timeout(within):
                await sluice._listening.wait()
        except TimeoutError:
            await sluice.stop()
            raise RuntimeError("sluice did not start:\n" + "".join(sluice.tail)) from None
        if not sluice.port:
            await sluice.stop()
            raise RuntimeError("sluice exited at start:\n" + "".join(sluice.tail))
        return sluice

    async def _read(self) -> None:
        offset, partial = 0, b""
        while True:
            exited = self.proc.returncode is not None
            chunk = await asyncio.to_thread(_read_from, self.log_path, offset)
            offset += len(chunk)
            *lines, partial = (partial + chunk).split(b"\n")
            for raw in lines:
                self._line(raw.decode("utf-8", "replace") + "\n")
            if exited:
                break
            await asyncio.sleep(0.05 if self._listening.is_set() else 0.01)
        self._listening.set()

    def _line(self, line: str) -> None:
        self.tail.append(line)
        if "level=warn" in line or "level=error" in line or " WARNING " in line:
            self.warnings.append(line)
        if not self.admin_port and (m := _ADMIN.search(line)):
            self.admin_port = int(m.group(2))
        if not self.port and (m := _LISTENING.search(line)):
            self.port = int(m.group(2))
            self._listening.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def stop(self, within: float = 60.0) -> float:
        """SIGTERM and wait; returns how long the stop took."""
        started = time.monotonic()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(within):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._pump
        return time.monotonic() - started


def _read_from(path: Path, offset: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read()


async def smtp_ready(port: int, *, within: float = 30.0) -> None:
    """Wait until the server on ``port`` greets and answers EHLO (deadline)."""
    deadline = time.monotonic() + within
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                greeting = await reader.readline()
                writer.write(b"EHLO probe.bench\r\n")
                while (line := await reader.readline())[3:4] == b"-":
                    pass
                if greeting.startswith(b"220") and line.startswith(b"250"):
                    writer.write(b"QUIT\r\n")
                    return
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepts SMTP on 127.0.0.1:{port}")
        await asyncio.sleep(0.01)
