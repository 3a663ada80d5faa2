"""Providers of two nodes sharing one store hold the limits and the skip together.

In process, on each backend (the three-process test is
tests/e2e/test_fleet_limits.py): two ``ProviderSet``s, each with its own
``Fleet`` (node name), over one store, and a real upstream.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from relay.config import SpoolSettings, loads
from relay.model import Delivered
from relay.outbound.providers import Partial, ProviderSet, Unavailable
from relay.outbound.shared_limits import Fleet
from relay.store.spool import Spool
from tests.conftest import provider_for
from tests.upstream import TestUpstream

DATA = b"From: app@example.org\r\nTo: r@example.net\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
async def spool(spool_where: Path | SpoolSettings) -> AsyncIterator[Spool]:
    """One store for both nodes: what they share is in it (SQLite, then PostgreSQL)."""
    s = await Spool.open(spool_where)
    yield s
    await s.aclose()


def _node(spool: Spool, name: str, providers: list[dict[str, object]]) -> ProviderSet:
    cfg = loads(yaml.safe_dump({"providers": providers}), source=f"{name}.yaml")
    return ProviderSet.from_config(
        cfg,
        local_hostname="sluice.test",
        counters=spool,
        health_log=spool,
        fleet=Fleet(spool, name),
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_daily_limit_is_reserved_in_the_shared_store(
    spool: Spool, upstream: TestUpstream
) -> None:
    capped = provider_for(upstream, "capped", daily_limit=3)
    a, b = _node(spool, "a", [capped]), _node(spool, "b", [capped])
    try:
        for node in (a, b, a):
            await node.by_id["capped"].deliver("app@example.org", ["r@example.net"], DATA)
        refused = await b.by_id["capped"].deliver("app@example.org", ["r@example.net"], DATA)
        assert isinstance(refused, Unavailable) and "daily limit of 3" in refused.reason
        assert len(upstream.messages) == 3
        # Each node's "sent today" is the fleet's.
        assert [(await n.status())[0].sent_today for n in (a, b)] == [3, 3]
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_rolling_recipients_limit_is_shared_and_sends_what_fits(
    spool: Spool, upstream: TestUpstream
) -> None:
    capped = provider_for(
        upstream, "capped", daily_limit=3, limit_unit="recipients", limit_window="rolling_24h"
    )
    a, b = _node(spool, "a", [capped]), _node(spool, "b", [capped])
    two = ["r1@example.net", "r2@example.net"]
    try:
        sent = await a.by_id["capped"].deliver("app@example.org", two, DATA)
        assert isinstance(sent, list) and all(isinstance(o, Delivered) for o in sent)
        partly = await b.by_id["capped"].deliver("app@example.org", two, DATA)
        assert isinstance(partly, Partial), partly  # one fits, the other waits for the window
        assert len(partly.outcomes) == 1 and "rolling 24 h" in partly.rest.reason
        assert [len(m.recipients) for m in upstream.messages] == [2, 1]
        assert (await a.status())[0].sent_today == 3
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_circuit_opened_on_one_node_is_skipped_by_the_other(
    spool: Spool, upstream: TestUpstream
) -> None:
    breaker = {"failure_threshold": 1, "cooldown": "60s"}
    dead = {"id": "p", "host": "127.0.0.1", "port": _closed_port(), "encryption": "none"}
    a = _node(spool, "a", [{**dead, **breaker}])
    b = _node(spool, "b", [provider_for(upstream, "p", **breaker)])
    try:
        first = await a.by_id["p"].deliver("app@example.org", ["r@example.net"], DATA)
        assert isinstance(first, list) and not isinstance(first[0], Delivered)
        skipped = await b.by_id["p"].deliver("app@example.org", ["r@example.net"], DATA)
        assert isinstance(skipped, Unavailable), skipped
        assert "skipped by the fleet" in skipped.reason and "(on node a)" in skipped.reason
        assert skipped.until == pytest.approx(
            a.by_id["p"].state.health.blocked_until(skipped.until - 30) or 0
        )
        assert upstream.messages == []
    finally:
        await a.aclose()
        await b.aclose()
