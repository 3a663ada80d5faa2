"""Limits as providers count them (recipients, rolling 24 h) and ``retry.schedule``, over loopback.

The rolling window and the schedule run Sluice on a simulated clock
(``Daemon(clock=...)``): the spool, the limits and the retry decisions all
read it, so a day passes in a moment and every time in the spool is exact.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from relay.config import load
from relay.daemon import Daemon
from relay.model import QueueEntry, RecipientStatus
from relay.outbound.limits import SLOT_SECONDS, next_utc_midnight, slot_key
from relay.outbound.providers import ProviderStatus
from tests.conftest import (
    Running,
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    smtp_send,
    write_config,
)
from tests.daemon_proc import run_cli
from tests.outbound.helpers import SENDER, entries, message, queue_id_of
from tests.upstream import TestUpstream

DAY = 86400.0
#: where the simulated clock starts: 19:55 UTC, so half a day later is past midnight
T0 = float(calendar.timegm((2026, 11, 29, 19, 55, 0)))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def clocked(
    tmp_path: Path, clock: Clock, providers: list[dict[str, Any]], **sections: Any
) -> AsyncIterator[Running]:
    path = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, providers, **sections))
    daemon = Daemon(load(path), config_path=path, clock=clock)
    async with daemon.running():
        yield Running(daemon, path)


async def _status(s: Running, pid: str) -> ProviderStatus:
    for p in await s.daemon.snapshot().providers.status():
        if p.id == pid:
            return p
    raise KeyError(pid)


async def _entries_where(
    s: Running, qid: str, n: int, *, reason: str = "", **want: Any
) -> list[QueueEntry]:
    """The ``n`` recipients of ``qid`` with these fields and ``reason`` in their reason, or []."""
    found = [
        e
        for e in await entries(s.spool, qid)
        if reason in e.reason and all(getattr(e, k) == v for k, v in want.items())
    ]
    return found if len(found) == n else []


async def test_a_recipients_limit_sends_what_fits_and_the_rest_wait_without_an_attempt(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    only = [provider_for(upstream, "m365", daily_limit=3, limit_unit="recipients")]
    rcpts = [f"r{i}@example.net" for i in range(5)]
    async with sluice(only) as s:
        _, reply = await smtp_send(s.port, SENDER, rcpts, message("five recipients"))
        qid = queue_id_of(reply)
        (got,) = await upstream.wait_for(1)
        assert len(got.recipients) == 3  # one transaction with as many as fit
        sent = await eventually(lambda: _entries_where(s, qid, 3, status=RecipientStatus.SENT))
        waiting = await eventually(
            lambda: _entries_where(s, qid, 2, reason="limit", status=RecipientStatus.QUEUED)
        )
        assert sorted(e.email for e in sent) == sorted(got.recipients)
        assert sorted(e.email for e in sent + waiting) == rcpts
        for e in waiting:
            assert e.attempts == 0  # waiting for the window is not an attempt
            assert e.next_attempt_at == next_utc_midnight(time.time())
            assert "daily limit of 3 recipients reached" in e.reason
        status = await _status(s, "m365")
        assert (status.sent_today, status.daily_limit, status.limit_unit) == (3, 3, "recipients")
        # A message of one recipient waits too: the limit is used up.
        _, reply = await smtp_send(s.port, SENDER, ["late@example.net"], message("late"))
        late = queue_id_of(reply)
        await eventually(
            lambda: _entries_where(
                s, late, 1, reason="limit", status=RecipientStatus.QUEUED, attempts=0
            )
        )
    assert len(upstream.messages) == 1


async def test_a_recipients_limit_refused_recipients_do_not_count(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["RCPT:nobody@example.net"] = "550 5.1.1 no such user"
    only = [provider_for(upstream, "m365", daily_limit=3, limit_unit="recipients")]
    async with sluice(only) as s:
        rcpts = ["a@example.net", "nobody@example.net", "b@example.net"]
        await smtp_send(s.port, SENDER, rcpts, message("one refused"))
        await upstream.wait_for(1)
        await s.wait_idle()
        assert (await _status(s, "m365")).sent_today == 2


async def test_a_rolling_window_reopens_24_hours_after_use_not_at_midnight(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    clock = Clock(T0)
    rolling = [provider_for(upstream, "gmail", daily_limit=2, limit_window="rolling_24h")]
    reopens = (T0 // SLOT_SECONDS) * SLOT_SECONDS + DAY + SLOT_SECONDS
    async with clocked(tmp_path, clock, rolling) as s:
        for i in range(2):
            await smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}"))
        await upstream.wait_for(2)
        _, reply = await smtp_send(s.port, SENDER, ["third@example.net"], message("third"))
        third = queue_id_of(reply)
        (entry,) = await eventually(
            lambda: _entries_where(
                s, third, 1, reason="limit", status=RecipientStatus.QUEUED, attempts=0
            )
        )
        assert entry.next_attempt_at == reopens
        assert "per rolling 24 h" in entry.reason
        # Half a day later (past a UTC midnight): still 2 used, the third still waits.
        clock.now = T0 + DAY / 2
        assert time.gmtime(clock.now).tm_mday != time.gmtime(T0).tm_mday
        status = await _status(s, "gmail")
        assert (status.sent_today, status.limit_window) == (2, "rolling_24h")
        assert len(upstream.messages) == 2
        # When the first slot leaves the window, the waiting mail goes by itself.
        clock.now = reopens
        await upstream.wait_for(3)
        await eventually(lambda: _entries_where(s, third, 1, status=RecipientStatus.SENT))
        assert (await _status(s, "gmail")).sent_today == 1
    # A restart on the same spool: the slots are durable, the old one pruned.
    async with clocked(tmp_path, clock, rolling) as s:
        assert (await _status(s, "gmail")).sent_today == 1
        name = "provider:gmail:messages:10m"
        assert await s.spool.counter_since(name, "") == {slot_key(reopens): 1}


async def test_retry_schedule_sets_next_attempt_between_attempts(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    clock = Clock(T0)
    upstream.reply["RCPT"] = "451 4.3.0 try again later"
    retry = {"schedule": ["3m", "7m*2", "30m"], "jitter": 0, "give_up_after": "1d"}
    async with clocked(tmp_path, clock, [provider_for(upstream)], retry=retry) as s:
        _, reply = await smtp_send(s.port, SENDER, ["r@example.net"], message("deferred"))
        qid = queue_id_of(reply)
        expected = T0
        for attempt, delay in enumerate([180, 420, 420, 1800, 1800], start=1):
            (entry,) = await eventually(
                lambda a=attempt: _entries_where(  # type: ignore[misc]
                    s, qid, 1, status=RecipientStatus.DEFERRED, attempts=a
                )
            )
            expected += delay
            assert entry.next_attempt_at == expected, f"after attempt {attempt}"
            clock.now = expected  # due: the scheduler's next poll claims it
        del upstream.reply["RCPT"]
        await upstream.wait_for(1)
        await eventually(lambda: _entries_where(s, qid, 1, status=RecipientStatus.SENT, attempts=6))


async def test_providers_list_shows_usage_in_the_limits_unit_and_window(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    m365 = provider_for(
        upstream,
        "m365",
        daily_limit=10,
        limit_unit="recipients",
        limit_window="rolling_24h",
        rate="30/m",
        rate_unit="recipients",
    )
    async with sluice([m365]) as s:
        await smtp_send(s.port, SENDER, ["a@example.net", "b@example.net"], message("two"))
        # 30/m recipients holds one token at a time: one recipient goes now, the
        # other waits for the rate (no attempt counted) and goes about 2 s later.
        first, second = await upstream.wait_for(2)
        assert len(first.recipients) == len(second.recipients) == 1
        assert second.at - first.at >= 1.5
        await s.wait_idle()
        path = s.config_path
    code, out, err = await run_cli("providers", "list", "-c", str(path))
    assert code == 0, err
    assert "last 24 h:   2 sent / 10 recipients" in out, out
    assert "rate:        30/m recipients" in out
    code, out, _ = await run_cli("providers", "list", "--json", "-c", str(path))
    (row,) = json.loads(out)
    assert (row["sent_today"], row["limit_unit"], row["limit_window"]) == (
        2,
        "recipients",
        "rolling_24h",
    )
