"""An outcome that cannot be written after the provider's 250 is kept, not sent again (#23 point 4).

The disk fills for real: the spool lives on a small tmpfs, and the test
upstream fills that file system to the last byte while it holds the 250 of
the message it has just taken (``TestUpstream.on_data``). The spool's WAL is
truncated first, so that no write can reuse blocks it already had: the next
commit (Sluice recording the outcome) fails with SQLITE_FULL, as on a
production disk that ran out under load. Then the space comes back.

Mounting a tmpfs needs root (CI runs as root); elsewhere that test is skipped.
The lease sweep's exclusion and the pending structure's back-off and bound
are checked on their own below.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import SpoolSettings
from relay.model import AttemptStatus, Claim, RecipientStatus
from relay.outbound.pending import PendingOutcomes, Unrecorded
from relay.store.spool import Finish, NewMessage, Spool
from relay.store.writer import reserve_path
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.small_disk import fill as fill_up
from tests.small_disk import small_tmpfs
from tests.upstream import Received, TestUpstream

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a size-limited tmpfs (a disk that fills) needs root"
)

MESSAGES = 3


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system for the spool, unmounted after the test."""
    with small_tmpfs(tmp_path / "disk", 8) as mnt:
        yield mnt


def fill(disk: Path, spool: Path) -> Path:
    """Truncate the spool's WAL, drop its reserve, then fill ``disk`` until ENOSPC.

    Runs on the event loop's thread without yielding, so no Sluice coroutine
    writes in between; the checkpoint waits for the writer thread if it is busy.
    """
    conn = sqlite3.connect(spool, timeout=30)
    try:
        deadline = time.monotonic() + 10
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
            assert time.monotonic() < deadline, "the WAL could not be truncated"
    finally:
        conn.close()
    # The daemon's reserve file (``relay.store.writer.DiskSpace``) is gone
    # too: it is given back at the first failed write, and here something
    # else on the machine has already eaten that room. Without this, the
    # reserve would let the outcomes be written at once and the scenario
    # would never happen (which is what the reserve is for, on a disk that
    # fills only once).
    reserve_path(spool).unlink(missing_ok=True)
    return fill_up(disk)


def message_id(msg: Received) -> str:
    found = re.search(rb"^Message-ID: <([^>]*)>", msg.data, re.MULTILINE | re.IGNORECASE)
    assert found is not None
    return found[1].decode()


@needs_root
@pytest.mark.parametrize(
    "leases_full",
    [0, 3],
    ids=["space-back-at-once", "full-for-three-leases"],
)
async def test_outcome_written_late_and_never_sent_twice(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
    leases_full: int,
) -> None:
    caplog.set_level(logging.INFO)
    spool_path = small_disk / "spool.sqlite3"
    lease = 1.0  # short, so that today's code reclaims the recipients within the test
    fillers: list[Path] = []

    async def disk_fills_before_the_250(msg: Received) -> None:
        if upstream.on_data is not None:
            upstream.on_data = None  # once
            fillers.append(fill(small_disk, spool_path))

    async with sluice(
        [provider_for(upstream)],
        spool={"path": str(spool_path)},
        delivery={"lease": f"{lease}s"},
    ) as s:
        assert s.daemon.scheduler is not None
        # Paused while the messages arrive, so that one claim takes them all and
        # the disk is full when each of the three 250s comes back.
        await s.spool.pause_provider("up1", actor="test")
        for i in range(MESSAGES):
            body = f"Subject: m{i}\r\nMessage-ID: <m{i}@example.org>\r\n\r\nbody {i}\r\n".encode()
            refused, _ = await smtp_send(s.port, "app@example.org", [f"r{i}@example.net"], body)
            assert refused == {}

        def all_waiting() -> bool:
            said = [r.getMessage() for r in caplog.records if r.name == "sluice.scheduler"]
            return sum("paused by operator" in line for line in said) == MESSAGES

        # Each was claimed and put back to wait for the pause's end: resuming
        # before the last is put back would leave it waiting its full delay.
        await eventually(all_waiting)
        upstream.on_data = disk_fills_before_the_250
        await s.spool.resume_provider("up1", actor="test")

        # Usually one claim takes all three and their 250s come back on the
        # full disk. On a loaded machine the claim may split, and a claim is a
        # write too: a message not yet claimed when the disk filled waits for
        # the space (it was never sent, so it is not this test's case). Wait
        # for every claimed one, then count those.
        await upstream.wait_for(1)
        await eventually(lambda: s.spool.health().writes.failing)
        scheduler = s.daemon.scheduler
        await eventually(lambda: scheduler.unrecorded == len(upstream.messages))
        sent_on_full_disk = len(upstream.messages)
        if leases_full:
            # The disk stays full past the leases of the claimed recipients, and
            # the scheduler sweeps expired leases meanwhile (every lease / 4).
            full_until = time.monotonic() + leases_full * lease
            await eventually(lambda: time.monotonic() > full_until, within=10)
            assert len(upstream.messages) == sent_on_full_disk, "a recipient sent again"
            assert s.daemon.scheduler.unrecorded == sent_on_full_disk
            metric = s.daemon.metrics.registry.get_sample_value("sluice_outcomes_unrecorded")
            assert metric == sent_on_full_disk
            # What /healthz reads (degraded: "N delivery outcomes not yet written").
            assert s.daemon.admin_status().outcomes_unrecorded == sent_on_full_disk
        fillers.pop().unlink()  # space comes back

        async def all_sent() -> bool:
            counts = await s.spool.counts_by_status()
            return counts[RecipientStatus.SENT] == MESSAGES

        await eventually(all_sent, within=30)
        # Give a wrongly reclaimed recipient every chance to go out again.
        await s.wait_idle()
        got = sorted(message_id(m) for m in upstream.messages)
        assert got == [f"m{i}@example.org" for i in range(MESSAGES)], "each message exactly once"
        counts = await s.spool.counts_by_status()
        assert counts[RecipientStatus.SENT] == MESSAGES
        assert not counts[RecipientStatus.QUEUED] and not counts[RecipientStatus.SENDING]
        assert s.daemon.scheduler.unrecorded == 0

    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
    lines = [r.getMessage() for r in caplog.records if r.name == "sluice.scheduler"]
    assert sum("cannot be recorded" in line for line in lines) == sent_on_full_disk
    assert sum("recorded late" in line for line in lines) == sent_on_full_disk


async def test_the_lease_sweep_leaves_kept_recipients_alone(
    tmp_path: Path, spool_where: Path | SpoolSettings
) -> None:
    # A recipient whose outcome the scheduler holds keeps its row "sending" past
    # its lease; the sweep takes back only the others.
    clock = [1000.0]
    async with await Spool.open(spool_where, clock=lambda: clock[0]) as spool:
        for q in ("Q1", "Q2"):
            await spool.enqueue(
                NewMessage(q, "a@x.y", [f"{q}@x.y"], b"Subject: s\r\n\r\nb\r\n", "s", 1000.0)
            )
        kept, other = await spool.claim_due(10, lease=60)
        (kept_id,) = kept.recipients
        clock[0] += 61
        assert await spool.requeue_expired_leases(keep={kept_id}) == 1
        counts = await spool.counts_by_status()
        assert counts[RecipientStatus.SENDING] == 1 and counts[RecipientStatus.QUEUED] == 1
        # Recorded late, over the row it kept: sent, and never claimable in between.
        finish = Finish(
            kept_id,
            kept.attempt_ids[kept_id],
            RecipientStatus.SENT,
            AttemptStatus.SUCCESS,
            None,
            250,
            "250 ok",
            "up1",
        )
        assert await spool.finish([finish]) == 1
        (again,) = await spool.claim_due(10, lease=60)
        assert again.queue_id == other.queue_id


def kept(pending: PendingOutcomes, rid: int, now: float) -> Unrecorded:
    claim = Claim(rid, f"Q{rid}", "a@x.y", 0.0, "s", {}, {rid: rid}, data=b"body")
    finish = Finish(
        rid, rid, RecipientStatus.SENT, AttemptStatus.SUCCESS, None, 250, "250 ok", "up1"
    )
    return pending.keep(claim, [finish], [], [], error="disk full", now=now)


def test_pending_outcomes_back_off_and_bound() -> None:
    pending = PendingOutcomes(limit=2, first=1.0, cap=4.0, rng=random.Random(1))
    assert pending.next_in(0.0) is None and not pending.full
    first = kept(pending, 1, now=0.0)
    assert first.claim.data is None, "no body is held in memory"
    assert 0.8 <= first.retry_at <= 1.2  # the first wait, with its spread
    assert pending.due(0.5) == [] and pending.due(1.2) == [first]
    waits = []
    for _ in range(5):
        pending.failed_again(first, "still full", now=10.0)
        waits.append(first.retry_at - 10.0)
    assert 1.6 <= waits[0] <= 2.4 and all(3.2 <= w <= 4.8 for w in waits[2:])  # capped
    assert first.failures == 6 and first.error == "still full"
    kept(pending, 2, now=0.0)
    assert pending.full and len(pending) == 2
    assert pending.recipient_ids() == {1, 2}
    pending.recorded(first)
    assert pending.recipient_ids() == {2} and not pending.full


@needs_root
async def test_stopped_before_the_outcome_is_written_sends_it_again_at_the_next_start(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The window the memory cannot cover: the daemon stops (or dies) while the
    # outcome waits. The recipient is still "sending" in the spool, so the next
    # start sends it again, once: the rule for any delivery in flight at a crash.
    caplog.set_level(logging.INFO)
    spool_path = small_disk / "spool.sqlite3"
    fillers: list[Path] = []

    async def disk_fills_before_the_250(msg: Received) -> None:
        upstream.on_data = None
        fillers.append(fill(small_disk, spool_path))

    body = b"Subject: once\r\nMessage-ID: <once@example.org>\r\n\r\nbody\r\n"
    async with sluice([provider_for(upstream)], spool={"path": str(spool_path)}) as s:
        upstream.on_data = disk_fills_before_the_250
        refused, _ = await smtp_send(s.port, "app@example.org", ["r@example.net"], body)
        assert refused == {}
        assert s.daemon.scheduler is not None
        scheduler = s.daemon.scheduler
        await eventually(lambda: scheduler.unrecorded == 1)
    stopping = [r.getMessage() for r in caplog.records if "stopping with" in r.getMessage()]
    assert stopping == [
        "stopping with 1 recipient outcome not recorded"
        " (spool commit failed: database or disk is full); the next start sends them again"
    ]
    fillers.pop().unlink()

    async with sluice([provider_for(upstream)], spool={"path": str(spool_path)}) as s:
        await upstream.wait_for(2)
        await s.wait_idle()
        counts = await s.spool.counts_by_status()
        assert counts[RecipientStatus.SENT] == 1
    assert [message_id(m) for m in upstream.messages] == ["once@example.org"] * 2
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"


@needs_root
async def test_a_refusal_recorded_late_still_counts_as_a_bounce(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What follows a recording (the 5.1.1 counted as a hard bounce) follows the
    # late recording too, once.
    caplog.set_level(logging.INFO)
    spool_path = small_disk / "spool.sqlite3"
    fillers: list[Path] = []
    upstream.reply["RCPT:gone@example.net"] = "550 5.1.1 <gone@example.net>: user unknown"

    async def disk_fills_before_the_250(msg: Received) -> None:
        upstream.on_data = None
        fillers.append(fill(small_disk, spool_path))

    body = b"Subject: two\r\nMessage-ID: <two@example.org>\r\n\r\nbody\r\n"
    async with sluice(
        [provider_for(upstream)], spool={"path": str(spool_path)}, bounces={"threshold": 1}
    ) as s:
        assert s.daemon.scheduler is not None
        scheduler = s.daemon.scheduler
        upstream.on_data = disk_fills_before_the_250
        refused, _ = await smtp_send(
            s.port, "app@example.org", ["ok@example.net", "gone@example.net"], body
        )
        assert refused == {}
        await eventually(lambda: scheduler.unrecorded == 1)
        assert await s.spool.suppressions.active("gone@example.net") is None
        fillers.pop().unlink()
        await eventually(lambda: scheduler.unrecorded == 0)
        await s.wait_idle()
        counts = await s.spool.counts_by_status()
        assert counts[RecipientStatus.SENT] == 1 and counts[RecipientStatus.FAILED] == 1
        entry = await s.spool.suppressions.active("gone@example.net")
        assert entry is not None and "5.1.1" in entry.reason
        assert len(await s.spool.suppressions.bounces_of("gone@example.net")) == 1
    assert [message_id(m) for m in upstream.messages] == ["two@example.org"]
    assert upstream.messages[0].recipients == ["ok@example.net"]
    assert not [r for r in caplog.records if r.exc_info], "no traceback in the log"
