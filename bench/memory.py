"""The memory run: one large message through the whole path, and the peak memory it took.

1. The counting sink and ``sluice serve`` (with ``smtp.workers: 1``, so that
   accepting and delivering are separate processes, as by default on 2+ CPUs)
   start; each process's resident memory is read once it answers EHLO.
2. One message of ``size`` bytes (a header and base64 lines, like a mail with
   an attachment) is sent over SMTP; Sluice accepts it into the spool and
   delivers it to the sink (``messages`` times, each once the last arrived:
   whether what stays held grows with each one).
3. Once the sink has it (its bytes are compared with what was sent), and
   again after a short settle, ``/proc/PID/status`` gives each process's
   ``VmHWM`` (the peak resident set since it started) and ``VmRSS`` (what it
   still holds).

Bounded in time: every wait has a deadline, and the run is one message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import SinkProcess, SluiceProcess, smtp_ready, write_sluice_config
from bench.procstat import descendants, rss_bytes

__all__ = ["make_message", "run_memory"]

_MB = 2**20
#: how long after delivery the processes get to give memory back before the second reading
_SETTLE = 3.0


def make_message(size: int, token: str) -> bytes:
    """About ``size`` bytes: a few header fields and 76-character base64 lines, CRLF only.

    No line starts with ``.``, so the bytes on the wire after DATA are the
    message itself (no dot-stuffing), which lets the sink compare them.
    """
    head = (
        f"X-Bench: {token}\r\n"
        "From: bench@example.org\r\nTo: sink@example.net\r\n"
        "Subject: one large message\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode()
    raw = os.urandom((size - len(head)) * 57 // 78 + 57)
    lines = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return head + lines[: size - len(head)].rpartition(b"\r\n")[0] + b"\r\n"


def _memory(pid: int) -> dict[str, float]:
    return {
        "peak_mb": round(rss_bytes(pid, "VmHWM") / _MB, 1),
        "rss_mb": round(rss_bytes(pid, "VmRSS") / _MB, 1),
        "anon_mb": round(rss_bytes(pid, "RssAnon") / _MB, 1),
    }


async def _send(port: int, message: bytes, within: float) -> str:
    """One SMTP transaction; the reply to the end of data."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:

            async def reply() -> bytes:
                while (line := await reader.readline())[3:4] == b"-":
                    pass
                return line

            await reply()
            for command in (
                b"EHLO bench.invalid\r\n",
                b"MAIL FROM:<bench@example.org>\r\n",
                b"RCPT TO:<sink@example.net>\r\n",
                b"DATA\r\n",
            ):
                writer.write(command)
                answer = await reply()
                if answer[:1] not in b"23":
                    raise RuntimeError(f"{command!r}: {answer!r}")
            writer.write(message)
            writer.write(b".\r\n")
            await writer.drain()
            final = (await reply()).decode().strip()
            writer.write(b"QUIT\r\n")
            return final
        finally:
            writer.close()


async def run_memory(*, size: int, messages: int = 1, within: float = 300.0) -> dict[str, Any]:
    """Send ``messages`` of ``size`` bytes through Sluice, one after another.

    Returns each process's memory before, right after the last delivery and
    after a settle, and whether the last message arrived byte for byte.
    """
    token = f"memory-{os.getpid()}-{time.time_ns()}"
    message = make_message(size, token)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-memory-") as tmp:
        sink = await SinkProcess.start()
        sluice: SluiceProcess | None = None
        try:
            cfg = Path(tmp) / "sluice.yaml"
            write_sluice_config(
                cfg, sink_port=sink.port, spool=Path(tmp) / "spool.sqlite3", workers="1"
            )
            sluice = await SluiceProcess.start(cfg)
            await smtp_ready(sluice.port)
            workers = [p for p in descendants(sluice.pid) if p != sluice.pid]
            if len(workers) != 1:
                raise RuntimeError(f"expected one accept worker, found {workers}")
            (worker,) = workers
            before = {"daemon": _memory(sluice.pid), "worker": _memory(worker)}
            for n in range(1, messages + 1):
                started = time.monotonic()
                reply = await _send(sluice.port, message, within)
                accepted = time.monotonic() - started
                if not reply.startswith("250"):
                    raise RuntimeError(f"not accepted: {reply}")
                deadline = time.monotonic() + within
                while await sink.count() < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the sink did not get the message in time")
                    await asyncio.sleep(0.05)
                delivered = time.monotonic() - started
            _, length, digest = (await sink.command(f"last {token}")).split()
            # The sink keeps what came before the end line, whose CRLF ends
            # the message's last line: the message without its last two bytes.
            sent = memoryview(message)[:-2]
            identical = int(length) == len(sent) and digest == hashlib.sha256(sent).hexdigest()
            after = {"daemon": _memory(sluice.pid), "worker": _memory(worker)}
            await asyncio.sleep(_SETTLE)
            settled = {"daemon": _memory(sluice.pid), "worker": _memory(worker)}
        finally:
            if sluice is not None:
                await sluice.stop()
            await sink.stop()
    return {
        "size_mb": round(len(message) / _MB, 2),
        "messages": messages,
        "accepted_s": round(accepted, 2),
        "delivered_s": round(delivered, 2),
        "byte_identical": identical,
        "before": before,
        "after_delivery": after,
        "settled": settled,
    }
