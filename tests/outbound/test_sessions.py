"""Connection reuse: several messages per upstream session; a broken session is discarded."""

from __future__ import annotations

import asyncio

from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.outbound.helpers import SENDER, message, queue_id_of, sent
from tests.upstream import TestUpstream


async def test_messages_share_one_connection(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream, max_connections=1, idle_timeout="30s")]) as s:
        for i in range(4):
            await smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}"))
            await upstream.wait_for(i + 1)
    assert upstream.connections == 1
    assert [m.recipients for m in upstream.messages] == [[f"r{i}@example.net"] for i in range(4)]


async def test_dead_pooled_session_is_replaced_without_a_deferral(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream, max_connections=1, idle_timeout="30s")]) as s:
        await smtp_send(s.port, SENDER, ["a@example.net"], message("first"))
        await upstream.wait_for(1)
        # The idle connection dies at its next use (MAIL), as a provider's idle cut looks.
        upstream.drop_once.add("MAIL")
        _, reply = await smtp_send(s.port, SENDER, ["b@example.net"], message("second"))
        await upstream.wait_for(2)
        qid = queue_id_of(reply)
        (entry,) = await eventually(lambda: sent(s.spool, qid))
        (status,) = await s.daemon.snapshot().providers.status()
    assert entry.attempts == 1  # no temporary failure was recorded
    assert upstream.connections == 2
    assert status.health == "ok"


async def test_connection_closed_while_idle_is_not_reused(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream, max_connections=1, idle_timeout="30s")]) as s:
        await smtp_send(s.port, SENDER, ["a@example.net"], message("first"))
        await upstream.wait_for(1)
        await upstream.stop()  # cuts the idle session
        await upstream.restart()
        _, reply = await smtp_send(s.port, SENDER, ["b@example.net"], message("second"))
        await upstream.wait_for(2)
        (entry,) = await eventually(lambda: sent(s.spool, queue_id_of(reply)))
    assert entry.attempts == 1
    assert upstream.connections == 2


async def test_max_connections_bounds_parallel_sessions(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.hang.add("DATA")  # hold every transaction open until released (then 421)
    p = provider_for(upstream, max_connections=2, idle_timeout="30s", cooldown="0s")
    async with sluice([p]) as s:
        await asyncio.gather(
            *(smtp_send(s.port, SENDER, [f"r{i}@example.net"], message(f"m{i}")) for i in range(6))
        )
        await eventually(lambda: upstream.connections == 2)
        upstream.hang.clear()
        upstream._release.set()
        await upstream.wait_for(6)
    # Six messages due at once, never more than two connections.
    assert upstream.connections == 2, upstream.connections
