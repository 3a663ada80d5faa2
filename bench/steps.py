"""Where one client's time goes: the latency of each SMTP step, one message per connection.

``python -m bench steps`` drives a relay (Sluice, and Postfix with
``--compare postfix``) from one client that opens a connection per message
and waits for every reply, as a PHP mailer or a cron job does, and reports
the median wait of each step (connect -> greeting, EHLO, MAIL, RCPT, DATA,
body -> 250, QUIT) and the CPU each process of the relay used per message.

The client is plain blocking sockets in a thread of its own (no event loop,
no pipelining), so its own cost is small and the same for both relays.
Nothing here measures throughput under load: ``bench run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bench.postfix import PostfixInstance
from bench.procs import SinkProcess, SluiceProcess, smtp_ready, write_sluice_config
from bench.procstat import cpu_seconds, descendants, tree_cpu_seconds
from bench.runner import free_port

#: the relay's SMTP port, and its processes now
_Target = tuple[int, Callable[[], list[int]]]

__all__ = ["STEPS", "run_steps"]

#: the steps of one message, in order: what the client waits for
STEPS = ("greeting", "ehlo", "mail", "rcpt", "data", "body", "quit")


def _body(size: int) -> bytes:
    head = b"From: app@example.com\r\nTo: user@example.net\r\nSubject: steps\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def _one_message(port: int, body: bytes, waits: dict[str, list[float]]) -> None:
    """Connect, EHLO, MAIL, RCPT, DATA, body, QUIT; the wait of each, in ms."""
    clock = time.perf_counter
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = replies.readline()
                if not line:
                    raise ConnectionError("the relay closed the connection")
                if line[3:4] != b"-":
                    return line

        marks = [clock()]
        for command in (
            None,
            b"EHLO client.example\r\n",
            b"MAIL FROM:<app@example.com>\r\n",
            b"RCPT TO:<user@example.net>\r\n",
            b"DATA\r\n",
            body + b".\r\n",
            b"QUIT\r\n",
        ):
            if command is not None:
                sock.sendall(command)
            line = reply()
            if line[:1] not in (b"2", b"3"):
                raise RuntimeError(f"the relay refused: {line!r}")
            marks.append(clock())
    for step, start, end in zip(STEPS, marks[:-1], marks[1:], strict=True):
        waits[step].append((end - start) * 1000)


def _drive(port: int, messages: int, warmup: int, size: int) -> dict[str, Any]:
    body = _body(size)
    waits: dict[str, list[float]] = {step: [] for step in STEPS}
    for _ in range(warmup):
        _one_message(port, body, {step: [] for step in STEPS})
    started = time.perf_counter()
    for _ in range(messages):
        _one_message(port, body, waits)
    seconds = time.perf_counter() - started
    return {
        "messages": messages,
        "rate": messages / seconds,
        "p50_ms": {step: statistics.median(v) for step, v in waits.items()},
        "cycle_ms": seconds / messages * 1000,
    }


def _process_cpu(pids: Callable[[], list[int]]) -> dict[int, float]:
    """Each live process's CPU seconds, with the children it reaped (Postfix's master:
    the smtpd and smtp processes that exited during the run)."""
    out = {}
    for pid in pids():
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid, children=True)
    return out


@contextlib.asynccontextmanager
async def _sluice(
    sink: SinkProcess, work: Path
) -> AsyncIterator[tuple[int, Callable[[], list[int]]]]:
    cfg = work / "sluice.yaml"
    write_sluice_config(cfg, sink_port=sink.port, spool=work / "spool.sqlite3")
    proc = await SluiceProcess.start(cfg)
    try:
        await smtp_ready(proc.port)
        yield proc.port, lambda: descendants(proc.pid)
    finally:
        await proc.stop()


@contextlib.asynccontextmanager
async def _postfix(
    sink: SinkProcess, work: Path
) -> AsyncIterator[tuple[int, Callable[[], list[int]]]]:
    port = free_port()
    async with PostfixInstance(work / "postfix", port, sink.port) as pf:
        await smtp_ready(port)
        yield port, lambda: descendants(pf.master_pid())


async def run_steps(relay: str, *, messages: int, warmup: int, size: int) -> dict[str, Any]:
    """One relay's step latencies and CPU per message (each process by name)."""
    sink = await SinkProcess.start()
    try:
        with tempfile.TemporaryDirectory(prefix=f"bench-steps-{relay}-") as tmp:
            target = _sluice if relay == "sluice" else _postfix
            async with target(sink, Path(tmp)) as (port, pids):
                root = pids()[0]
                before, total_before = _process_cpu(pids), tree_cpu_seconds(root)
                report = await asyncio.to_thread(_drive, port, messages, warmup, size)
                after, total_after = _process_cpu(pids), tree_cpu_seconds(root)
                names = {pid: _name(pid) for pid in after}
    finally:
        await sink.stop()
    by_name: dict[str, float] = {}
    for pid, seconds in after.items():
        name = names[pid]
        # A process that started during the run counts from zero.
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(pid, 0.0)
    per_msg = 1000 / (messages + warmup)
    report["cpu_ms_per_msg"] = {name: v * per_msg for name, v in sorted(by_name.items())}
    report["cpu_ms_per_msg_total"] = (total_after - total_before) * per_msg
    report["relay"] = relay
    return report


def _name(pid: int) -> str:
    """``worker`` or ``daemon`` for Sluice's processes, the program's name for Postfix's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"relay.inbound.workers" in cmdline:
        return "sluice worker"
    if b"relay.cli" in cmdline:
        return "sluice daemon"
    return os.path.basename(cmdline[0].decode(errors="replace")) or str(pid)
