"""A full disk does not wedge the spool (issue #23, point 3): on a real, small file system.

The disk here is a real tmpfs of a few MB, filled by a filler file the way a
runaway log fills ``/var``: SQLite gets ENOSPC from the kernel, not a page
cap. Mounting needs root (CI runs as root); elsewhere these tests skip.

What must hold: mail answered 250 is never lost; while the disk is full mail
is refused (452 at MAIL, 451 at DATA) with a bounded number of log lines;
once the filler goes, mail is taken again within seconds, without a
restart; and ``sluice serve`` starts on a full disk instead of exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import pytest

from relay.errors import SpoolError
from relay.store.spool import Spool
from relay.store.writer import Checkpointer, write_lock_path
from tests.conftest import eventually, fast_config, provider_for, write_config
from tests.daemon_proc import DaemonProcess, start_daemon
from tests.small_disk import fill, small_tmpfs
from tests.store.test_health import FULL, new_message
from tests.upstream import TestUpstream

TOKEN = re.compile(rb"X-Test-Token: (\d+)")
#: the log lines about refused mail and the full disk (listener and writer)
DISK_LINES = re.compile(r"spool disk full|could not spool|refus|room again|takes mail again")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MB tmpfs, unmounted afterwards."""
    with small_tmpfs(tmp_path / "fs", 16) as mnt:
        yield mnt


def reserve_path(spool: Path) -> Path:
    """The reserve file the daemon keeps beside its spool."""
    return spool.with_name(spool.name + ".reserve")


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


async def healthz(port: int) -> tuple[int, str]:
    """``GET /healthz``: (HTTP status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _sep, body = raw.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


def message(token: int) -> bytes:
    # 20 KB: a few hundred of them fill what is left of 16 MB quickly.
    return (
        f"Subject: full {token}\r\nX-Test-Token: {token}\r\n\r\n".encode()
        + (b"z" * 998 + b"\r\n") * 20
    )


@dataclass
class Senders:
    """Clients sending all the time: which tokens got 250, and the refusal codes seen."""

    port: int
    accepted: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    next_token: int = 0

    async def one(self) -> None:
        token = self.next_token
        self.next_token += 1
        try:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port, timeout=20) as c:
                await c.sendmail("app@example.org", ["a@example.net"], message(token))
        except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
            assert 400 <= exc.code < 500, exc  # the client keeps the message
            self.refused.append(exc.code)
            await asyncio.sleep(0.01)  # a client's pause before trying again
            return
        self.accepted.append(token)

    async def run(self, stop: asyncio.Event, sessions: int = 4) -> None:
        async def loop() -> None:
            while not stop.is_set():
                await self.one()

        await asyncio.gather(*(loop() for _ in range(sessions)))


def delivered(upstream: TestUpstream) -> set[int]:
    found = set()
    for m in upstream.messages:
        match = TOKEN.search(m.data)
        if match:
            found.add(int(match.group(1)))
    return found


@contextlib.asynccontextmanager
async def daemon_on(
    folder: Path, upstream: TestUpstream, *, workers: int = 0
) -> AsyncIterator[DaemonProcess]:
    """``sluice serve`` with its spool on ``folder`` and the admin on a free port."""
    tmp = folder.parent
    cfg = fast_config(
        tmp,
        [provider_for(upstream)],
        admin={"enabled": True, "listen": "127.0.0.1:0"},
        smtp={"workers": workers},
    )
    cfg["spool"] = {"path": str(folder / "spool.sqlite3")}
    daemon = await start_daemon(write_config(tmp / "sluice.yaml", cfg))
    try:
        yield daemon
    finally:
        await daemon.kill()


async def admin_port(daemon: DaemonProcess) -> int:
    match = await daemon.wait_line(re.compile(r"listening admin=127\.0\.0\.1:(\d+)"))
    return int(match.group(1))


async def test_a_failed_write_gives_the_reserve_back_truncates_the_wal_and_recovers(
    small_fs: Path,
) -> None:
    path = small_fs / "spool.sqlite3"
    async with await Spool.open(path, checkpoints=True) as spool:
        reserve = reserve_path(path)
        assert reserve.stat().st_size == 1024 * 1024  # 1/16 of the 16 MB file system
        await spool.enqueue(new_message(100_000))
        filler = fill(small_fs)
        with pytest.raises(SpoolError, match=FULL):
            for _ in range(200):  # what the WAL already had room for goes in first
                await spool.enqueue(new_message(100_000))
        assert spool.disk_full and spool.health().writes.failing
        assert not reserve.exists()
        # The WAL gave its room back at once, and the reserve's room is free.
        assert (small_fs / "spool.sqlite3-wal").stat().st_size == 0
        assert free_bytes(small_fs) >= 1024 * 1024

        filler.unlink()
        started = time.monotonic()
        # No write needed: the writer looks for room by itself.
        await eventually(lambda: not spool.disk_full, within=5)
        assert time.monotonic() - started < 5
        assert reserve.stat().st_size == 1024 * 1024
        await spool.enqueue(new_message(100_000))
        await spool.probe_write()
        assert not spool.health().writes.failing


@pytest.mark.parametrize("workers", [0, 1], ids=["in-daemon", "accept-worker"])
async def test_mail_refused_on_a_full_disk_is_never_lost_and_flows_again_without_a_restart(
    small_fs: Path, upstream: TestUpstream, workers: int
) -> None:
    async with daemon_on(small_fs, upstream, workers=workers) as daemon:
        port = await admin_port(daemon)
        senders = Senders(daemon.port)
        stop = asyncio.Event()
        sending = asyncio.create_task(senders.run(stop))
        try:
            await eventually(lambda: len(senders.accepted) >= 20, within=30)
            lines_before = len(daemon.lines)
            filler = fill(small_fs)
            await eventually(lambda: len(senders.refused) >= 200, within=60)
            status, body = await healthz(port)
            assert status == 503 and "disk full" in body, body

            filler.unlink()
            accepted = len(senders.accepted)
            started = time.monotonic()
            await eventually(lambda: len(senders.accepted) >= accepted + 20, within=15)
            assert time.monotonic() - started < 15
        finally:
            stop.set()
            await sending
        # A line or two for hundreds of refusals, not one each.
        disk_lines = [ln for ln in daemon.lines[lines_before:] if DISK_LINES.search(ln)]
        assert 1 <= len(disk_lines) <= 6, "\n".join(disk_lines)
        assert 452 in senders.refused  # refused at MAIL, before the body is sent
        # Every message answered 250 reaches the upstream: none lost.
        want = set(senders.accepted)
        await eventually(lambda: want <= delivered(upstream), within=60)
        await eventually(lambda: healthy(port), within=15)
        assert await daemon.stop() == 0


async def healthy(port: int) -> bool:
    status, _body = await healthz(port)
    return status == 200


async def test_serve_starts_on_a_full_disk_refuses_mail_and_recovers(
    small_fs: Path, upstream: TestUpstream
) -> None:
    # A daemon ran on this spool before (and so made its reserve file): the
    # restart of issue #23, which exited 75.
    async with daemon_on(small_fs, upstream) as daemon:
        assert await daemon.stop() == 0
    assert reserve_path(small_fs / "spool.sqlite3").exists()
    filler = fill(small_fs)
    async with daemon_on(small_fs, upstream) as daemon:
        port = await admin_port(daemon)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10) as c:
                await c.sendmail("app@example.org", ["a@example.net"], message(1))
        assert refused.value.code == 452 and "4.3.1" in refused.value.message
        status, body = await healthz(port)
        assert status == 503 and "spool disk full: no room at start-up" in body, body
        assert json.loads(body)["spool_writes"]["failing"] is True

        filler.unlink()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=10) as c:
            await eventually(lambda: _sends(c), within=10)
        await eventually(lambda: 1 in delivered(upstream), within=30)
        await eventually(lambda: healthy(port), within=15)
        assert await daemon.stop() == 0


async def _sends(client: aiosmtplib.SMTP) -> bool:
    try:
        await client.sendmail("app@example.org", ["a@example.net"], message(1))
    except aiosmtplib.SMTPSenderRefused:
        return False
    return True


def test_refused_mail_is_logged_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Imported here: the rest of this module also runs against the code before #23.
    from relay.inbound.listener import SpoolRefusals

    caplog.set_level(logging.INFO, logger="sluice.smtp")
    now = [0.0]
    refusals = SpoolRefusals(clock=lambda: now[0])
    for i in range(1000):  # a minute of clients retrying as fast as they can
        now[0] = i * 0.059
        refusals.refused("127.0.0.1", "database or disk is full", disk_full=True)
    now[0] = 60.0
    refusals.refused("127.0.0.1", "database or disk is full", disk_full=True)
    refusals.accepted()
    refusals.accepted()
    # On the edge of full, taking and refusing by turns: no more lines this minute.
    for _ in range(50):
        refusals.refused("127.0.0.1", "no room for mail", disk_full=True)
        refusals.accepted()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("spool disk full: refusing mail (from 127.0.0.1:")
    assert lines[1].startswith("spool disk full: 1000 messages refused in the last 60 s")
    assert lines[2] == "spool takes mail again (0 messages refused since the last line)"


async def test_a_checkpointer_failing_on_a_full_disk_goes_again_as_soon_as_there_is_room(
    small_fs: Path,
) -> None:
    path = small_fs / "spool.sqlite3"
    async with await Spool.open(path) as spool:  # no checkpointer: the WAL keeps it all
        for _ in range(20):
            await spool.enqueue(new_message(100_000))
        filler = fill(small_fs)
        # Copying 2 MB of WAL into the database needs room it cannot have.
        checkpointer = Checkpointer(path, write_lock_path(path), interval=0.1)
        try:
            # Five failures (0.2 + 0.4 + 0.8 + 1.6 s apart): its back-off is now 3.2 s.
            await eventually(lambda: checkpointer.health.errors >= 5, within=15)
            assert checkpointer.health.failing
            assert FULL in (checkpointer.health.last_error or "")
            filler.unlink()
            started = time.monotonic()
            await eventually(lambda: not checkpointer.health.failing, within=10)
            assert time.monotonic() - started < 1.5  # not the rest of the back-off
        finally:
            await checkpointer.close()
