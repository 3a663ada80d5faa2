"""``sluice providers list`` tells whether a provider is paused or cooling down (issue 24.4).

A real Sluice delivers through two real upstreams; one of them refuses
connections until its circuit breaker opens (a long cool-down). The operator
pauses the other one with the real CLI. ``providers list``, run as another
process, shows both: the pause with its reason and end, the cool-down with
its end and reason, and the usage of the day against the daily limit; and
``/healthz`` says degraded for the cool-down, with its reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream


async def listing(config: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    rc, text, err = await run_cli("providers", "list", "-c", str(config))
    assert rc == 0, err
    rc, out, err = await run_cli("providers", "list", "--json", "-c", str(config))
    assert rc == 0, err
    return text, {r["id"]: r for r in json.loads(out)}


def block(text: str, pid: str) -> str:
    """The lines ``providers list`` prints for one provider."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{pid}  ("))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines)
    )
    return "\n".join(lines[start:end])


async def test_list_shows_pause_cooldown_and_usage(
    sluice: SluiceFactory, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    await upstream.stop()  # connection refused
    down = provider_for(upstream, "down", priority=10, failure_threshold=1, cooldown="1h")
    busy = provider_for(upstream2, "busy", priority=20, daily_limit=100)
    admin = {"enabled": True, "listen": "127.0.0.1:0"}
    async with sluice([down, busy], admin=admin) as s:
        await smtp_send(s.port, "app@example.org", ["a@example.net"], b"Subject: x\r\n\r\nx\r\n")
        await upstream2.wait_for(1)

        async def cooling() -> tuple[str, dict[str, dict[str, Any]]] | None:
            text, rows = await listing(s.config_path)
            ok = rows["down"]["health"] == "cooldown" and rows["busy"]["sent_today"] == 1
            return (text, rows) if ok else None

        text, rows = await eventually(cooling, within=30, interval=0.3)
        d = rows["down"]
        assert d["cooldown_until"] is not None and d["cooldown_until"] > time.time() + 3000
        assert "connection refused" in d["health_reason"] and d["health_since"] is not None
        assert d["paused"] is None
        down_text = block(text, "down")
        assert "health:      cooling down since" in down_text
        assert "connection refused" in down_text
        assert "cooldown:    skipped until" in down_text
        busy_text = block(text, "busy")
        assert "health:      healthy" in busy_text
        assert "today (UTC): 1 sent / 100 messages" in busy_text
        # The automatic cool-down turns /healthz degraded, with the reason (issue 24.1).
        assert s.daemon.admin is not None
        url = f"http://127.0.0.1:{s.daemon.admin.address.port}/healthz"
        async with httpx.AsyncClient(timeout=30) as c:
            health = (await c.get(url)).json()
        assert health["status"] == "degraded", health
        (line,) = [p for p in health["problems"] if p.startswith("provider down")]
        assert line.startswith("provider down cooling down since") and "connection refused" in line
        assert health["providers"] == [line]

        rc, out, err = await run_cli(
            "providers", "pause", "busy", "--for", "2h", "--reason", "incident 42",
            "-c", str(s.config_path),
        )  # fmt: skip
        assert rc == 0, (out, err)
        text, rows = await listing(s.config_path)
        b = rows["busy"]
        assert b["paused"] is not None and b["paused"]["reason"] == "incident 42"
        assert b["paused"]["until"] > time.time() + 7000 and b["paused"]["by"]
        assert b["cooldown_until"] is None
        busy_text = block(text, "busy")
        assert "paused:      until " in busy_text and "incident 42" in busy_text
        assert "paused" not in block(text, "down")
