"""Failover between providers, the circuit breaker, and provider hints (421 / try again in)."""

from __future__ import annotations

import time
from pathlib import Path

from relay.model import AttemptStatus, RecipientStatus
from tests.conftest import (
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    smtp_send,
    write_config,
)
from tests.outbound.helpers import SENDER, entries, message, queue_id_of, sent
from tests.upstream import TestUpstream


async def test_failover_while_first_is_down_and_recovery(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    await upstream.stop()
    first = provider_for(upstream, "first", priority=10, failure_threshold=2, cooldown="1s")
    second = provider_for(upstream2, "second", priority=20)
    async with sluice([second, first]) as s:  # file order must not matter, priority does
        started = time.monotonic()
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message("m0"))
        qid = queue_id_of(reply)
        await upstream2.wait_for(1)
        (entry,) = await eventually(lambda: sent(s.spool, qid))
        # Taken by the second provider in the same attempt, not after a back-off.
        assert entry.attempts == 1 and entry.provider == "second"
        assert time.monotonic() - started < 5
        # Once the breaker is open the dead provider is skipped outright.
        for i in range(1, 3):
            await smtp_send(s.port, SENDER, ["a@example.net"], message(f"m{i}"))
        await upstream2.wait_for(3)
        by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
        assert by_id["first"].health == "cooldown"
        assert "connect" in by_id["first"].last_error.lower()
        assert by_id["first"].last_error_at is not None
        assert by_id["second"].health == "ok"
        # The cheap words asked after every outcome (provider_state events) agree.
        health = s.daemon.snapshot().providers.health()
        assert health == {pid: p.health for pid, p in by_id.items()}

        # The first provider comes back: after the cool-down it is probed and used again.
        await upstream.restart()
        n = 0

        async def first_takes_mail() -> bool:
            nonlocal n
            n += 1
            await smtp_send(s.port, SENDER, ["b@example.net"], message(f"probe {n}"))
            return bool(upstream.messages)

        await eventually(first_takes_mail, within=15, interval=0.3)
        await eventually(
            lambda: _health(s, "first", "ok"),
        )


async def _health(s: object, pid: str, want: str) -> bool:
    statuses = await s.daemon.snapshot().providers.status()  # type: ignore[attr-defined]
    return any(p.id == pid and p.health == want for p in statuses)


async def test_health_starts_unknown(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)]) as s:
        (status,) = await s.daemon.snapshot().providers.status()
        assert status.health == "unknown" and status.last_ok_at is None
        assert s.daemon.snapshot().providers.health() == {status.id: "unknown"}


async def test_421_with_hint_pauses_provider_and_moves_on(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    upstream.reply["MAIL"] = "421 4.7.0 Too many messages, try again in 5 minutes"
    providers = [provider_for(upstream, "busy", priority=1), provider_for(upstream2, "spare")]
    async with sluice(providers) as s:
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)
        await upstream2.wait_for(1)
        (entry,) = await eventually(lambda: sent(s.spool, qid))
        assert entry.provider == "spare"
        by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
        busy = by_id["busy"]
        assert busy.health == "cooldown"
        assert busy.blocked_until is not None
        assert busy.blocked_until - time.time() > 250  # the provider's 5 minutes
        # Paused: the next message does not even knock on its door.
        upstream.reply.clear()
        await smtp_send(s.port, SENDER, ["b@example.net"], message("second"))
        await upstream2.wait_for(2)
        assert upstream.messages == []


async def test_hint_pauses_the_only_provider_and_mail_waits(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["DATA"] = "451 4.7.1 Sending rate exceeded, try again in 10 minutes"
    async with sluice([provider_for(upstream, "only")]) as s:
        before = time.time()
        _, reply = await smtp_send(s.port, SENDER, ["a@example.net"], message())
        qid = queue_id_of(reply)

        async def deferred() -> list[object]:
            found = await entries(s.spool, qid)
            return [e for e in found if e.status is RecipientStatus.DEFERRED]

        (entry,) = await eventually(deferred)
        assert "try again in 10 minutes" in entry.reason
        assert entry.next_attempt_at is not None and entry.next_attempt_at > before + 5
        (status,) = await s.daemon.snapshot().providers.status()
        assert status.health == "cooldown"
        assert status.blocked_until is not None and status.blocked_until > before + 500
        log = await s.spool.list_log(search=qid)
        assert [e.status for e in log] == [AttemptStatus.DEFERRED]
        assert log[0].provider == "only"


async def test_health_and_usage_survive_a_reload(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream, tmp_path: Path
) -> None:
    await upstream2.stop()
    providers = [
        provider_for(upstream, "main", daily_limit=100),
        provider_for(upstream2, "dead", priority=200),
    ]
    async with sluice(providers) as s:
        await smtp_send(s.port, SENDER, ["a@example.net"], message("plain"))
        await upstream.wait_for(1)
        # The dead one is only tried when named.
        data = message("to dead", headers="X-Sluice-Provider: dead\r\n")
        await smtp_send(s.port, SENDER, ["b@example.net"], data)
        await eventually(lambda: _health(s, "dead", "error"))
        providers[0]["caption"] = "renamed"
        write_config(s.config_path, fast_config(tmp_path, providers))
        assert await s.daemon.reload() is True
        by_id = {p.id: p for p in await s.daemon.snapshot().providers.status()}
    assert by_id["main"].caption == "renamed"
    assert by_id["main"].sent_today == 1 and by_id["main"].health == "ok"
    assert by_id["dead"].health == "error" and by_id["dead"].last_error
