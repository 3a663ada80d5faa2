"""Graceful stop and the spool lock, on real daemon processes."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import eventually, provider_for, smtp_send
from tests.daemon_proc import DaemonProcess
from tests.upstream import TestUpstream


def _statuses(spool: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT status, count(*) FROM recipients GROUP BY status").fetchall()
    finally:
        conn.close()
    return {status: n for status, n in rows}


async def test_sigterm_during_hanging_deliveries_loses_nothing(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    upstream.hang.add("DATA")  # the provider takes the data and never answers
    path = ops_config(
        [provider_for(upstream, max_connections=4)],
        delivery={"shutdown_grace": "1s"},
    )
    spool = path.parent / "spool.sqlite3"
    d = await daemon_proc(path).start()
    for i in range(3):
        await smtp_send(
            d.port, "a@example.org", [f"r{i}@example.net"], b"Subject: %d\r\n\r\nx\r\n" % i
        )
    # All three are in flight (claimed, waiting on the hung DATA).
    await eventually(lambda: _statuses(spool).get("sending") == 3)

    started = time.monotonic()
    assert await d.stop(signal.SIGTERM) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"stop took {elapsed:.1f}s with a 1s grace"
    await d.wait_line("waiting up to 1s for 3 deliveries")
    # Nothing lost, nothing stuck "sending": everything is back in the queue.
    assert _statuses(spool) == {"queued": 3}

    # After a restart, with the provider healthy, every message is delivered.
    upstream.hang.clear()
    d2 = await daemon_proc(path).start()
    got = await upstream.wait_for(3)
    assert sorted(m.recipients[0] for m in got) == [f"r{i}@example.net" for i in range(3)]
    await eventually(lambda: _statuses(spool) == {"sent": 3})
    assert await d2.stop(signal.SIGINT) == 0


async def test_second_instance_on_the_same_spool_is_refused(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    first = await daemon_proc(path).start()
    assert first.proc is not None
    second = daemon_proc(path)
    await second.start(wait_listening=False)
    assert await second.wait() == 75
    assert f"is in use by another sluice process (pid {first.proc.pid})" in second.output
    assert not any("listening smtp=" in line for line in second.lines)
    # The first one did not notice.
    await smtp_send(first.port, "a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n")
    await upstream.wait_for(1)
    assert await first.stop() == 0


async def test_sigterm_while_idle_exits_zero_quickly(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    d = await daemon_proc(ops_config([provider_for(upstream)])).start()
    async with asyncio.timeout(5):
        assert await d.stop() == 0
    assert "stopped" in d.lines[-1]


async def test_start_up_with_a_large_queue_is_fast(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    n = 100_000
    path = ops_config([provider_for(upstream)])
    spool = path.parent / "spool.sqlite3"
    d = await daemon_proc(path).start()  # creates the schema
    assert await d.stop() == 0
    empty_start = await _time_to_listening(daemon_proc, path)

    # A big backlog, all deferred to later (nothing to deliver during the test),
    # and some left "sending" by a crash.
    later = time.time() + 86400
    conn = sqlite3.connect(spool)
    with conn:
        conn.executemany(
            "INSERT INTO messages (id, queue_id, received_at, sender, size) VALUES (?, ?, ?, ?, ?)",
            ((i, f"Q{i:015d}", later - 86400, "a@example.org", 10) for i in range(1, n + 1)),
        )
        conn.executemany(
            "INSERT INTO recipients (message_id, rcpt, status, since, next_attempt_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                (i, f"r{i}@example.net", "sending" if i <= 100 else "deferred", 0, later, 0)
                for i in range(1, n + 1)
            ),
        )
    conn.close()
    full_start = await _time_to_listening(daemon_proc, path)
    # Nothing proportional to the queue runs before the listener accepts.
    assert full_start < empty_start + 1.5, (empty_start, full_start)
    assert not upstream.messages


async def _time_to_listening(daemon_proc: Callable[..., DaemonProcess], path: Path) -> float:
    started = time.monotonic()
    d = await daemon_proc(path).start()
    elapsed = time.monotonic() - started
    assert await d.stop() == 0
    return elapsed


class _SlowSink:
    """A real SMTP server that answers the final dot after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[bytes] = []
        self.data_started = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        await asyncio.sleep(self.delay)  # the provider is slow, not dead
        self.received.append(envelope.original_content or b"")
        return "250 2.0.0 slow but fine"


async def test_sigterm_lets_a_slow_delivery_finish_within_the_grace(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
) -> None:
    from aiosmtpd.smtp import SMTP

    sink = _SlowSink(delay=1.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="slow.test"), host="127.0.0.1", port=0
    )
    try:
        port = server.sockets[0].getsockname()[1]
        provider = {"id": "slow", "host": "127.0.0.1", "port": port, "encryption": "none"}
        path = ops_config([provider], delivery={"shutdown_grace": "10s"})
        spool = path.parent / "spool.sqlite3"
        d = await daemon_proc(path).start()
        await smtp_send(d.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nx\r\n")
        async with asyncio.timeout(10):
            await sink.data_started.wait()
        started = time.monotonic()
        assert await d.stop(signal.SIGTERM) == 0
        # It waited for the delivery (about 1s), not for the whole grace period.
        assert 0.5 < time.monotonic() - started < 8
        assert len(sink.received) == 1
        assert _statuses(spool) == {"sent": 1}
    finally:
        server.close()
        await server.wait_closed()
