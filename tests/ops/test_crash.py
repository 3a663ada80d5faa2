"""Crash safety with a real process: 250 means the message survives kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
from pathlib import Path

import aiosmtplib
import pytest

from tests.conftest import fast_config, provider_for, write_config
from tests.daemon_proc import start_daemon
from tests.upstream import TestUpstream

N = 150
SESSIONS = 10
TOKEN = re.compile(rb"X-Test-Token: (\d+)")


async def send_many(port: int, n: int) -> list[int]:
    """Send n messages over SESSIONS connections; return the tokens answered 250."""
    accepted: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
            while not queue.empty():
                i = queue.get_nowait()
                data = f"Subject: crash {i}\r\nX-Test-Token: {i}\r\n\r\nbody {i}\r\n".encode()
                _refused, reply = await client.sendmail("app@example.org", ["a@example.net"], data)
                assert "queued as" in reply
                accepted.append(i)

    await asyncio.gather(*(session() for _ in range(SESSIONS)))
    return accepted


def tokens(upstream: TestUpstream) -> list[int]:
    found = []
    for m in upstream.messages:
        match = TOKEN.search(m.data)
        assert match, m.data[:200]
        found.append(int(match.group(1)))
    return found


def in_flight(spool: Path) -> int:
    """Recipients claimed for delivery whose outcome was not committed (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as db:
        (n,) = db.execute("SELECT count(*) FROM recipients WHERE status = 'sending'").fetchone()
    return int(n)


async def crash_and_recover(
    tmp_path: Path, upstream: TestUpstream, *, upstream_up: bool, workers: int = 0
) -> tuple[int, int]:
    """Kill -9 right after the last 250, restart; (duplicates, deliveries in flight at the kill)."""
    cfg = write_config(
        tmp_path / "sluice.yaml",
        fast_config(tmp_path, [provider_for(upstream)], smtp={"workers": workers}),
    )
    if not upstream_up:
        await upstream.stop()
    daemon = await start_daemon(cfg)
    try:
        accepted = await send_many(daemon.port, N)
        # The very next instant after the last 250: the daemon and, with
        # smtp.workers, the worker processes that answered it, all at once.
        daemon.kill_group()
        assert await daemon.wait() == -signal.SIGKILL
    finally:
        await daemon.kill()
    assert sorted(accepted) == list(range(N))
    flying = await asyncio.to_thread(in_flight, tmp_path / "spool.sqlite3")
    if not upstream_up:
        await upstream.restart()

    restarted = await start_daemon(cfg)
    try:
        await upstream.wait_for(N, within=60)
        got = tokens(upstream)
        # Wait until every token arrived (duplicates may make the count reach N early).
        async with asyncio.timeout(60):
            while set(got) != set(range(N)):
                await upstream.wait_for(len(upstream.messages) + 1, within=60)
                got = tokens(upstream)
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert await restarted.wait() == 0
    assert set(got) == set(range(N))  # nothing lost
    return len(got) - N, flying  # duplicates: mail that was in flight at the kill


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "accept-worker"])
async def test_accepted_mail_survives_sigkill_while_queued(
    tmp_path: Path, upstream: TestUpstream, workers: int
) -> None:
    duplicates, _ = await crash_and_recover(tmp_path, upstream, upstream_up=False, workers=workers)
    # Nothing was in flight (the upstream was down), so nothing may be sent twice.
    assert duplicates == 0


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "accept-worker"])
async def test_accepted_mail_survives_sigkill_during_delivery(
    tmp_path: Path, upstream: TestUpstream, workers: int
) -> None:
    duplicates, flying = await crash_and_recover(
        tmp_path, upstream, upstream_up=True, workers=workers
    )
    print(f"after SIGKILL during delivery: {duplicates} duplicates, {flying} in flight")
    # Only recipients whose outcome was not committed at the kill (still
    # "sending" in the spool) can be re-sent, and a delivery keeps its slot
    # until its outcome is committed (Scheduler._attempt)...
    assert 0 <= duplicates <= flying
    # ... so those are at most the deliveries in flight (delivery.max_concurrent).
    assert flying <= 20
