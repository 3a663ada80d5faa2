"""Sluice as real processes: ``sluice serve`` with its stderr collected line by line,
and one-shot ``sluice`` commands."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

__all__ = ["LISTENING", "REPO", "DaemonProcess", "run_cli", "start_daemon"]

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening smtp=(\S+):(\d+)")


class DaemonProcess:
    """``python -m relay.cli serve -c PATH`` with its stderr collected line by line."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.port = 0
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, *, wait_listening: bool = True, within: float = 20.0) -> DaemonProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.cli",
            "serve",
            "-c",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            cwd=REPO,
            start_new_session=True,  # its own process group, accept workers included
        )
        self._reader = asyncio.create_task(self._read(), name="daemon-stderr")
        if wait_listening:
            match = await self.wait_line(LISTENING, within=within)
            self.port = int(match.group(2))
            await self.wait_line("sluice ready", within=within)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(
        self, pattern: str | re.Pattern[str], *, within: float = 15.0, start: int = 0
    ) -> re.Match[str]:
        """Wait (with a deadline) for a stderr line matching ``pattern``, from line ``start``."""
        regex = re.compile(re.escape(pattern)) if isinstance(pattern, str) else pattern
        seen = start

        def find() -> re.Match[str] | None:
            nonlocal seen
            for i in range(seen, len(self.lines)):
                if m := regex.search(self.lines[i]):
                    return m
            seen = len(self.lines)
            return None

        try:
            async with asyncio.timeout(within):
                async with self._changed:
                    while (m := find()) is None:
                        if self._reader is not None and self._reader.done():
                            raise AssertionError(f"daemon exited; no line {regex.pattern!r}")
                        await self._changed.wait()
                    return m
        except TimeoutError:
            raise AssertionError(
                f"no stderr line matching {regex.pattern!r} within {within}s:\n{self.output}"
            ) from None

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, within: float = 20.0) -> int:
        assert self.proc is not None
        async with asyncio.timeout(within):
            rc = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return rc

    def kill_group(self) -> None:
        """SIGKILL the daemon and every process it started, at the same instant."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)

    async def stop(self, sig: int = signal.SIGTERM, within: float = 20.0) -> int:
        self.send_signal(sig)
        return await self.wait(within)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


async def start_daemon(
    config: Path, *, env: dict[str, str] | None = None, within: float = 20.0
) -> DaemonProcess:
    """Start the daemon and return once it is listening and ready."""
    daemon = DaemonProcess(config, env)
    try:
        return await daemon.start(within=within)
    except BaseException:
        await daemon.kill()
        raise


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
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate(stdin)
    except BaseException:
        # Cancelled (a caller's deadline) or timed out: reap the child here, or
        # its transport is collected later, inside some other test.
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
