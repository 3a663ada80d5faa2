"""Real mail software nobody here wrote, run on loopback for a test.

Our aiosmtpd fakes (``tests/upstream.py``) share our own reading of the RFCs;
these do not. Each helper starts a private, unprivileged instance on a port
of the test's and stops it (by the PID it started) when the test ends.

Under CI (``CI`` set) a missing program fails the test: ``.ci/install-system-deps``
installs them, and a skip there would hide a broken install step. Elsewhere it
skips with the package to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "SinkMessage",
    "SmtpSink",
    "free_port",
    "require",
    "smtp_sink",
    "wait_for_port",
]

#: program -> the Debian package that ships it
PACKAGES = {
    "smtp-sink": "postfix",
    "smtp-source": "postfix",
    "postfix": "postfix",
    "dovecot": "dovecot-core",
    "doveadm": "dovecot-core",
    "swaks": "swaks",
    "msmtp": "msmtp",
    "php": "php-cli",
}


def require(program: str) -> str:
    """The path of ``program``; fail under CI, skip elsewhere, when it is missing."""
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin")
    if path is not None:
        return path
    package = PACKAGES.get(program, program)
    message = f"{program} is not installed (apt-get install {package}; .ci/install-system-deps)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for programs that cannot bind port 0 themselves."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_port(host: str, port: int, *, within: float = 10.0) -> None:
    """Poll until ``host:port`` accepts a connection, with a deadline."""
    deadline = time.monotonic() + within
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {within}s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@dataclass(frozen=True)
class SinkMessage:
    """One transaction as ``smtp-sink -d`` dumped it."""

    helo: str
    sender: str
    recipients: list[str]
    #: what followed MAIL FROM:<...> (e.g. ``BODY=8BITMIME``, ``SMTPUTF8``)
    mail_args: str
    #: the message as received, without the Received header smtp-sink adds
    data: bytes


@dataclass
class SmtpSink:
    """A running ``smtp-sink`` (Postfix's test server) that dumps every message."""

    host: str
    port: int
    dump_dir: Path
    process: asyncio.subprocess.Process
    flags: tuple[str, ...] = field(default=())

    def messages(self) -> list[SinkMessage]:
        """Every complete transaction dumped so far, oldest first."""
        out = []
        for path in sorted(self.dump_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            out.append(_parse_dump(path.read_bytes()))
        return out

    async def wait_for(self, count: int, *, within: float = 20.0) -> list[SinkMessage]:
        """Poll until ``count`` messages were dumped (deadline ``within``)."""
        deadline = time.monotonic() + within
        while True:
            got = self.messages()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink got {len(got)} of {count} messages")
            await asyncio.sleep(0.05)


def _parse_dump(raw: bytes) -> SinkMessage:
    """Split smtp-sink's ``X-*`` preamble and its own Received header from the message."""
    helo, sender, mail_args = "", "", ""
    recipients: list[str] = []
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(": ")
        value = value.rstrip("\r")
        if name == "X-Helo-Args":
            helo = value
        elif name == "X-Mail-Args":
            path, _, mail_args = value.partition(" ")
            sender = path.strip("<>")
        elif name == "X-Rcpt-Args":
            recipients.append(value.split(" ")[0].strip("<>"))
        i += 1
    # smtp-sink's own trace header: "Received:" and its continuation lines.
    if i < len(lines) and lines[i].startswith(b"Received: ") and b"smtp-sink" in raw:
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return SinkMessage(helo, sender, recipients, mail_args, b"\n".join(lines[i:]))


@contextlib.asynccontextmanager
async def smtp_sink(*flags: str, host: str = "127.0.0.1") -> AsyncIterator[SmtpSink]:
    """Run ``smtp-sink FLAGS`` on a free loopback port, dumping to a temp directory.

    Useful flags (``man smtp-sink``): ``-e`` no ESMTP (EHLO refused), ``-8`` no
    8BITMIME, ``-p`` no PIPELINING, ``-a`` no AUTH, ``-r CMDS`` answer those
    commands 4xx, ``-f CMDS`` 5xx, ``-q CMDS`` disconnect. It never offers SMTPUTF8.
    """
    program = require("smtp-sink")
    # smtp-sink drops privileges to nobody as root, so the dump directory must
    # be writable by it (pytest's tmp_path is 0700).
    dump_dir = Path(tempfile.mkdtemp(prefix="sluice-sink-"))
    os.chmod(dump_dir, 0o777)
    user: Sequence[str] = ("-u", "nobody") if os.geteuid() == 0 else ()
    process: asyncio.subprocess.Process | None = None
    try:
        for _ in range(5):  # another process may take the free port first
            port = free_port(host)
            process = await asyncio.create_subprocess_exec(
                program,
                *user,
                "-d",
                f"{dump_dir}/%Y%m%d%H%M%S.",
                *flags,
                f"{host}:{port}",
                "64",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await wait_for_port(host, port, within=5.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                await process.wait()
                continue
            break
        else:
            raise RuntimeError("smtp-sink did not start")
        yield SmtpSink(host, port, dump_dir, process, tuple(flags))
    finally:
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(dump_dir, ignore_errors=True)
