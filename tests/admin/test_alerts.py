"""Alerts: the oldest pending message, deferred recipients and provider failures per
hour are on /metrics, and past the ``alerts`` thresholds turn /healthz degraded."""

from __future__ import annotations

import pytest

from admin.backend import DaemonStatus
from admin.health import State, assess
from relay.config import AlertSettings
from relay.model import RecipientStatus
from relay.store.spool import SpoolHealth
from relay.store.writer import WriteHealth
from tests.admin.conftest import AppClientFactory
from tests.admin.test_health import gauge
from tests.conftest import Running, SluiceFactory, eventually, provider_for, smtp_send
from tests.upstream import TestUpstream

BODY = b"From: a@example.org\r\nSubject: x\r\n\r\nhi\r\n"


async def test_thresholds_turn_healthz_degraded_and_metrics_show_the_numbers(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    upstream.reply["RCPT"] = "451 4.3.0 try again later"
    alerts = {"oldest_pending_after": "1s", "deferred_over": 1, "provider_failures_per_hour": 2}
    async with (
        sluice(
            [provider_for(upstream, cooldown="0.5s")],
            alerts=alerts,
            retry={"first_delay": "0.3s", "max_delay": "0.3s", "jitter": 0},
        ) as s,
        app_client(s) as c,
    ):
        r = await c.get("/healthz")
        assert r.json()["status"] == "ok" and r.json()["deferred"] == 0

        await smtp_send(s.port, "a@example.org", ["b@example.net", "c@example.net"], BODY)

        async def degraded_by_all_three() -> list[str]:
            health = (await c.get("/healthz")).json()
            problems: list[str] = health["problems"]
            wanted = ("oldest_pending_after", "deferred_over", "provider_failures_per_hour")
            ok = health["status"] == "degraded" and all(
                any(w in p for p in problems) for w in wanted
            )
            return problems if ok else []

        problems = await eventually(degraded_by_all_three, within=20)
        assert any("2 recipients deferred" in p for p in problems)
        assert any(p.startswith("provider up1: ") for p in problems)
        r = await c.get("/healthz")
        assert r.status_code == 200  # degraded still takes mail: never 503
        metrics = (await c.get("/metrics")).text
        assert gauge(metrics, "sluice_deferred_recipients") == 2
        assert gauge(metrics, "sluice_oldest_pending_seconds") > 1
        assert 'sluice_provider_failures_last_hour{provider="up1"}' in metrics
        assert 'sluice_health{state="degraded"} 1.0' in metrics

        # The provider recovers: the queue drains, and what remains is its hour of failures.
        del upstream.reply["RCPT"]
        await upstream.wait_for(1, within=20)
        await s.wait_idle()
        assert await _deferred(s) == 0
        health = (await c.get("/healthz")).json()
        assert not any("deferred_over" in p or "oldest_pending" in p for p in health["problems"]), (
            health
        )
        assert any("provider_failures_per_hour" in p for p in health["problems"])


async def _deferred(s: Running) -> int:
    return (await s.spool.counts_by_status())[RecipientStatus.DEFERRED]


async def test_no_thresholds_no_alerts(
    sluice: SluiceFactory, upstream: TestUpstream, app_client: AppClientFactory
) -> None:
    """By default nothing is judged: a deferred queue alone keeps /healthz ok."""
    upstream.reply["RCPT"] = "451 4.3.0 try again later"
    async with sluice([provider_for(upstream)]) as s, app_client(s) as c:
        await smtp_send(s.port, "a@example.org", ["b@example.net"], BODY)
        await eventually(lambda: _deferred(s))
        health = (await c.get("/healthz")).json()
        assert health["status"] == "ok", health["problems"]
        assert health["deferred"] is None  # not even counted
        metrics = (await c.get("/metrics")).text
        assert gauge(metrics, "sluice_deferred_recipients") == 1


@pytest.mark.parametrize(
    ("age", "deferred", "failures", "state"),
    [
        (59.0, 10, {"main": 5}, State.OK),
        (61.0, 10, {"main": 5}, State.DEGRADED),
        (None, 11, {}, State.DEGRADED),
        (None, 0, {"main": 5, "backup": 6}, State.DEGRADED),
    ],
)
def test_assess_thresholds(
    age: float | None, deferred: int, failures: dict[str, int], state: State
) -> None:
    alerts = AlertSettings(oldest_pending_after=60, deferred_over=10, provider_failures_per_hour=5)
    h = assess(
        spool_readable=True,
        spool=SpoolHealth(WriteHealth(), None),
        status=DaemonStatus(started_at=0.0, listener_up=True),
        oldest_pending_age=age,
        alerts=alerts,
        deferred=deferred,
        provider_failures=failures,
    )
    assert h.state is state


def test_outcomes_waiting_to_be_written_turn_healthz_degraded() -> None:
    # The daemon's figure (Scheduler.unrecorded, through admin_status): delivery
    # outcomes the spool refused, held in memory; tests/outbound/
    # test_unrecorded_outcome.py makes them on a real full disk.
    def verdict(unrecorded: int) -> tuple[State, list[str]]:
        h = assess(
            spool_readable=True,
            spool=SpoolHealth(WriteHealth(), None),
            status=DaemonStatus(started_at=0.0, listener_up=True, outcomes_unrecorded=unrecorded),
            oldest_pending_age=None,
        )
        return h.state, h.problems

    assert verdict(0) == (State.OK, [])
    assert verdict(3) == (State.DEGRADED, ["3 delivery outcomes not yet written to the spool"])
    assert verdict(1)[1] == ["1 delivery outcome not yet written to the spool"]
