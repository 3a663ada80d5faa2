"""``/healthz`` and ``/metrics`` tell the truth: a full disk, a failing checkpointer,
a dead accept worker and mail waiting too long all show, and clear when they end.

Against a real running Sluice; the faults are real as far as the relay can
tell (see ``tests/store/test_health.py`` for how each is made).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import aiosmtplib
import httpx
import pytest

from relay.store.writer import Checkpointer, write_lock_path
from tests.admin.conftest import AppClientFactory
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.store.test_health import FULL, BrokenDisk, fill_the_disk, free_the_disk
from tests.upstream import TestUpstream


def big_message() -> bytes:
    return b"From: a@example.org\r\nSubject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 4000


def gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_a_full_disk_makes_the_relay_unhealthy_until_there_is_room(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        assert (await c.get("/healthz")).status_code == 200
        await fill_the_disk(s.spool)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await smtp_send(s.port, "a@example.org", ["b@example.net"], big_message())
        assert refused.value.code == 451  # not accepted: nothing is lost

        r = await c.get("/healthz")
        assert r.status_code == 503
        health = r.json()
        assert health["status"] == "unhealthy" and health["ok"] is False
        writes = health["spool_writes"]
        assert writes["failing"] is True and writes["errors"] >= 1
        assert FULL in writes["last_error"] and writes["last_error_at"] > 0
        assert any(FULL in p for p in health["problems"])
        metrics = (await c.get("/metrics")).text
        assert gauge(metrics, "sluice_spool_writes_failing") == 1
        assert gauge(metrics, "sluice_spool_write_errors") >= 1
        assert 'sluice_health{state="unhealthy"} 1.0' in metrics

        # Room again, and no mail coming in: the check's own probe write clears it.
        await free_the_disk(s.spool)
        r = await c.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert FULL in r.json()["spool_writes"]["last_error"]  # what happened stays told
        await smtp_send(s.port, "a@example.org", ["b@example.net"], big_message())
        await s.wait_idle()


async def test_a_failing_checkpointer_shows_while_it_lasts(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        # The daemon's checkpointer, on connections to a disk the test can break.
        spool = s.spool
        assert spool._checkpointer is not None
        await spool._checkpointer.close()
        disk = BrokenDisk()
        spool._checkpointer = Checkpointer(
            spool.path, write_lock_path(spool.path), interval=0.01, connect=disk.connect
        )
        await eventually(lambda: spool.health().checkpoints.last_ok_at is not None)  # type: ignore[union-attr]
        assert (await c.get("/healthz")).json()["status"] == "ok"

        disk.broken.set()

        async def degraded() -> httpx.Response | None:
            r = await c.get("/healthz")
            return r if r.json()["status"] == "degraded" else None

        r = await eventually(degraded)
        assert r.status_code == 200  # mail still flows: the writers checkpoint themselves
        cp = r.json()["checkpoints"]
        assert cp["running"] is True and cp["failing"] is True and cp["errors"] >= 1
        assert any("WAL checkpoints fail" in p for p in r.json()["problems"])
        assert gauge((await c.get("/metrics")).text, "sluice_spool_checkpoints_failing") == 1
        await smtp_send(s.port, "a@example.org", ["b@example.net"], big_message())
        await s.wait_idle()

        disk.broken.clear()

        async def ok() -> bool:
            return bool((await c.get("/healthz")).json()["status"] == "ok")

        await eventually(ok, within=30)
        assert gauge((await c.get("/metrics")).text, "sluice_spool_checkpoints_failing") == 0


async def test_a_killed_accept_worker_shows_until_it_is_replaced(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    async with sluice([provider_for(upstream)], smtp={"workers": 2}) as s, app_client(s) as c:
        pool = s.daemon.acceptors
        assert pool is not None
        health = (await c.get("/healthz")).json()
        assert health["accept_workers"] == {"configured": 2, "alive": 2}
        assert health["status"] == "ok"
        # Replacements fail to start until the test allows them, so the dead
        # worker's window is as long as the test needs, not a race.
        command = pool.command
        pool.command = (sys.executable, "-c", "raise SystemExit(3)")
        victim = pool.pids[0]
        os.kill(victim, signal.SIGKILL)

        async def degraded() -> httpx.Response | None:
            r = await c.get("/healthz")
            return r if r.json()["accept_workers"]["alive"] == 1 else None

        r = await eventually(degraded, within=30)
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert "1 of 2 accept workers running" in r.json()["problems"]
        metrics = (await c.get("/metrics")).text
        assert 'sluice_accept_workers{state="alive"} 1.0' in metrics
        assert 'sluice_accept_workers{state="configured"} 2.0' in metrics
        await smtp_send(s.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nx\r\n")

        pool.command = command

        async def replaced() -> bool:
            r = await c.get("/healthz")
            return bool(r.json()["status"] == "ok") and victim not in pool.pids

        await eventually(replaced, within=30)
        assert (await c.get("/healthz")).json()["accept_workers"]["alive"] == 2


async def test_the_oldest_pending_message_age(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT:later@example.net"] = "451 4.2.0 try later"
    retry = {"first_delay": "1h", "max_delay": "2h"}
    async with sluice([provider_for(upstream)], retry=retry) as s, app_client(s) as c:
        assert (await c.get("/healthz")).json()["oldest_pending_age"] is None
        assert gauge((await c.get("/metrics")).text, "sluice_oldest_pending_seconds") == 0
        sent_at = time.time()
        await smtp_send(s.port, "a@example.org", ["later@example.net"], b"Subject: s\r\n\r\nx\r\n")

        async def deferred() -> bool:
            rows = await s.spool.list_queue()
            return bool(rows) and rows[0].status == "deferred"

        await eventually(deferred)
        first = (await c.get("/healthz")).json()["oldest_pending_age"]
        assert first is not None and 0 <= first <= time.time() - sent_at

        async def older() -> float | None:
            metrics = (await c.get("/metrics")).text
            age = gauge(metrics, "sluice_oldest_pending_seconds")
            return age if age > first else None

        age = await eventually(older)
        assert age <= time.time() - sent_at
        assert (await c.get("/healthz")).json()["status"] == "ok"  # reported, not judged
