"""A provider that answers ``451 4.3.0`` to every recipient is not green anywhere (issue 24.1).

A real upstream, a real Sluice with its admin on a real port, and the real
``sluice providers list`` in another process: within a minute the provider
is "failing" (or "cooling down", once the same reply to several domains paused
it) with the upstream's reply on the provider list and page, in
``/api/providers``, in ``providers list`` (text and ``--json``), on
``/metrics`` and in ``/healthz`` (degraded, with the reason), and ``sluice
providers test`` no longer says a plain OK for its handshake. Once the
upstream accepts again and the waiting mail is delivered, it is green
everywhere again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send
from tests.daemon_proc import run_cli
from tests.upstream import TestUpstream

SENDER = "app@example.org"
REFUSAL = "451 4.3.0 Temporary local problem, try again later"


def message(subject: str) -> bytes:
    return f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


async def everywhere(c: httpx.AsyncClient, config: Path) -> dict[str, Any]:
    """What each surface says about provider ``main`` now."""
    api = {p["id"]: p for p in (await c.get("/api/providers")).json()}["main"]
    listing = (await c.get("/providers")).text
    page = (await c.get("/providers/main")).text
    overview = (await c.get("/")).text
    metrics = (await c.get("/metrics")).text
    healthz = (await c.get("/healthz")).json()
    rc, text, err = await run_cli("providers", "list", "-c", str(config))
    assert rc == 0, err
    rc, out, err = await run_cli("providers", "list", "--json", "-c", str(config))
    assert rc == 0, err
    (cli,) = json.loads(out)
    gauge = re.findall(r'sluice_provider_health\{provider="main",state="(\w+)"\} 1\.0', metrics)
    return {
        "api": api,
        "listing": listing,
        "page": page,
        "overview": overview,
        "metric": gauge,
        "healthz": healthz,
        "cli_text": text,
        "cli": cli,
    }


#: "failing" (the last attempts all failed for the provider's own reason) or
#: "cooling down" (the same 4xx to recipients of several domains paused it:
#: ``replies.AcrossTransactions``, issue 24.2): either is the truth, as long
#: as every surface says the same one.
TROUBLE = {"error": "failing", "cooldown": "cooling down"}


def failing(seen: dict[str, Any]) -> bool:
    api, cli, healthz = seen["api"], seen["cli"], seen["healthz"]
    word = api["health"]
    if word not in TROUBLE:
        return False
    label = TROUBLE[word]
    return (
        "451 4.3.0" in api["health_reason"]
        and cli["health"] == word
        and "451 4.3.0" in cli["health_reason"]
        and cli["health_since"] is not None
        and f"health:      {label} since" in seen["cli_text"]
        and seen["metric"] == [word]
        and healthz["status"] == "degraded"
        and any(
            p.startswith(f"provider main {label}") and "451 4.3.0" in p for p in healthz["problems"]
        )
        and all(
            f'data-health="{word}"' in seen[page] and "451 4.3.0" in seen[page]
            for page in ("listing", "page", "overview")
        )
    )


def green(seen: dict[str, Any]) -> bool:
    return (
        seen["api"]["health"] == "ok"
        and seen["cli"]["health"] == "ok"
        and "health:      healthy" in seen["cli_text"]
        and seen["metric"] == ["ok"]
        and seen["healthz"]["status"] == "ok"
        and all(
            'data-health="ok"' in seen[page] and 'data-health="error"' not in seen[page]
            for page in ("listing", "page", "overview")
        )
    )


async def test_a_provider_deferring_everyone_turns_red_everywhere_then_green(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    upstream.reply["RCPT"] = REFUSAL
    admin = {"enabled": True, "listen": "127.0.0.1:0"}
    # A short cool-down: the same 451 to several domains pauses the provider
    # (issue 24.2), and the green half of the test waits for its end.
    main = provider_for(upstream, "main", cooldown="3s")
    async with sluice([main], admin=admin) as s:
        assert s.daemon.admin is not None
        port = s.daemon.admin.address.port
        for i in range(3):
            await smtp_send(s.port, SENDER, [f"user{i}@d{i}.example"], message(f"m{i}"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            seen: dict[str, Any] = {}

            async def is_failing() -> bool:
                seen.update(await everywhere(c, s.config_path))
                return failing(seen)

            try:
                await eventually(is_failing, within=60, interval=0.5)
            except TimeoutError:
                raise AssertionError(f"not failing everywhere: {_brief(seen)}") from None
            assert not upstream.messages
            # The handshake passes, but `providers test` no longer says a plain OK.
            # It runs later than the look above: a 3 s cool-down may have ended
            # meanwhile (then "failing"), so it must name one trouble, consistently.
            rc, text, err = await run_cli("providers", "test", "main", "-c", str(s.config_path))
            assert rc != 0, (text, err)
            named = re.search(rf"deliveries: ({'|'.join(TROUBLE.values())}) since", text)
            assert named is not None and "451 4.3.0" in text, text
            assert f"=> handshake OK, but deliveries through main are {named[1]}" in text, text

            # The upstream takes mail again: the waiting mail goes, and more.
            del upstream.reply["RCPT"]
            for i in range(3, 5):
                await smtp_send(s.port, SENDER, [f"user{i}@d{i}.example"], message(f"m{i}"))
            await upstream.wait_for(5, within=30)

            async def is_green() -> bool:
                seen.update(await everywhere(c, s.config_path))
                return green(seen)

            try:
                await eventually(is_green, within=60, interval=0.5)
            except TimeoutError:
                raise AssertionError(f"not green everywhere: {_brief(seen)}") from None
            rc, text, err = await run_cli("providers", "test", "main", "-c", str(s.config_path))
            assert rc == 0 and "deliveries: healthy" in text and "=> OK" in text, (text, err)


def _brief(seen: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable surfaces, for an assertion message (not the whole pages)."""
    return {k: seen.get(k) for k in ("api", "cli", "metric", "healthz")} | {
        "cli_text": seen.get("cli_text", "")[:400]
    }
