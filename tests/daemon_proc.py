"""Run ``sluice serve`` as a real subprocess and find the port it bound."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DaemonProcess", "start_daemon"]

_LISTENING = re.compile(r"listening smtp=(\S+):(\d+)")


@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    port: int
    lines: list[str] = field(default_factory=list)
    _pump: asyncio.Task[None] | None = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def wait_for_line(self, needle: str, within: float = 15.0) -> str:
        """Wait until a stderr line contains ``needle`` (deadline, no fixed sleep)."""
        async with asyncio.timeout(within):
            while True:
                for line in self.lines:
                    if needle in line:
                        return line
                if self.proc.returncode is not None and self._pump is not None:
                    await self._pump
                    if not any(needle in line for line in self.lines):
                        raise AssertionError(f"daemon exited; no {needle!r} in:\n{self.log}")
                await asyncio.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait()

    async def wait(self, within: float = 30.0) -> int:
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            if self._pump is not None:
                await self._pump
        return code


async def start_daemon(
    config: Path, *, env: dict[str, str] | None = None, within: float = 20.0
) -> DaemonProcess:
    """Start the daemon and return once it logs its SMTP port."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "serve",
        "-c",
        str(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    lines: list[str] = []
    found: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()

    async def pump() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if (m := _LISTENING.search(line)) and not found.done():
                found.set_result((m.group(1), int(m.group(2))))
        if not found.done():
            found.set_exception(RuntimeError("daemon exited before listening:\n" + "".join(lines)))

    task = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(within):
            _host, port = await found
    except BaseException:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        raise
    return DaemonProcess(proc, port, lines, task)
