"""``sluice providers list``, ``sluice providers test [ID]`` and ``sluice providers connect ID``.

``list`` shows each provider's health (``relay.outbound.health``: as the
daemon last wrote it to the spool, with its reason and since when), an
operator's pause with its reason and end, an automatic cool-down with its
end, its settings, today's usage against its limits (read from the spool's
durable counters) and its credentials *masked*.
``test`` runs ``test_provider`` (connect, TLS, EHLO or HELO, STARTTLS, AUTH,
QUIT: the handshake delivery uses) and prints every step with the server's
reply and how long it took, then the provider's health from deliveries (a
server may pass the handshake and refuse every recipient); it exits 0 only
if every tested provider passed and none is failing or cooling down.
``connect`` signs an XOAUTH2 provider in through the OAuth 2.0 device grant
(RFC 8628): it prints a code and a URL, waits for the sign-in, and stores the
refresh token in the spool, where the daemon picks it up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from os import EX_CONFIG, EX_OK, EX_UNAVAILABLE, EX_USAGE
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from relay.cli import provider_edits
from relay.cli.controls import register_providers
from relay.config import Config, ProviderSettings, load
from relay.model import ProviderHealth, ProviderPause
from relay.secrets import SecretError
from relay.wording import plural, when

if TYPE_CHECKING:
    from relay.outbound.health import HealthRecord
    from relay.outbound.probe import TestReport

__all__ = ["register"]


def _credentials(p: ProviderSettings) -> str:
    """Masked, with where each secret comes from (``$VAR``, file, credential)."""
    if p.oauth2 is not None:
        o = p.oauth2
        parts = [f"client_id {o.client_id}"]
        if o.client_secret is not None:
            parts.append(f"client_secret {o.client_secret.display()}")
        if o.refresh_token is not None:
            parts.append(f"refresh_token {o.refresh_token.display()}")
        return f"XOAUTH2 as {p.username or '-'} ({', '.join(parts)})"
    if p.username is None:
        return "no AUTH"
    return f"{p.username} / {p.password.display() if p.password else '(no password)'}"


@dataclass(frozen=True, slots=True)
class _Live:
    """What the spool tells about one provider: usage, the daemon's health record, a pause."""

    used: int = 0
    health: HealthRecord | None = None
    pause: ProviderPause | None = None


async def _live(cfg: Config) -> dict[str, _Live]:
    """Per provider, from the spool if there is one (the daemon writes health on each change)."""
    # Imported when used: `providers list` opens the spool only when there is one.
    from relay.outbound.health import HealthRecord, record_key
    from relay.outbound.limits import Quota
    from relay.store.spool import ALL_PROVIDERS, Spool

    if cfg.spool.url is None and not cfg.spool.path.exists():
        return {p.id: _Live() for p in cfg.providers}
    out: dict[str, _Live] = {}
    async with await Spool.open(cfg.spool) as spool:
        pauses = await spool.pauses()
        for p in cfg.providers:
            raw = await spool.meta_get(record_key(p.id))
            out[p.id] = _Live(
                used=await Quota(p.id, spool, unit=p.limit_unit, window=p.limit_window).used(),
                health=HealthRecord.from_json(raw) if raw is not None else None,
                pause=pauses.get(p.id) or pauses.get(ALL_PROVIDERS),
            )
    return out


def _health(live: _Live, now: float) -> dict[str, Any]:
    """The health fields, in the words of the API and ``/metrics`` (``HealthRecord.resolve``)."""
    rec = live.health
    if rec is None:
        return {"health": ProviderHealth.UNKNOWN.value, "health_reason": "", "health_since": None}
    state, reason, since = rec.resolve(now)
    return {"health": state.value, "health_reason": reason, "health_since": since}


async def cmd_list(args: argparse.Namespace) -> int:
    # Shows no secret, connects nowhere: needs none (an operator's shell has none).
    cfg: Config = await asyncio.to_thread(load, args.config_path_of(args), secrets=False)
    live = await _live(cfg)
    now = time.time()
    order = {pid: n for n, pid in enumerate(_by_priority(cfg))}
    rows = []
    for p in cfg.providers:
        lv = live[p.id]
        rec = lv.health
        cooling = rec is not None and rec.blocked_until is not None and rec.blocked_until > now
        pause = lv.pause
        rows.append(
            {
                "id": p.id,
                "caption": p.caption,
                "enabled": p.enabled,
                "priority": p.priority,
                "order": order.get(p.id),
                **_health(lv, now),
                "paused": (
                    {"reason": pause.reason, "until": pause.until, "by": pause.actor}
                    if pause is not None
                    else None
                ),
                "cooldown_until": rec.blocked_until if cooling and rec is not None else None,
                "server": f"{p.host}:{p.port}",
                "encryption": p.encryption,
                "credentials": _credentials(p),
                "sent_today": lv.used,
                "daily_limit": p.daily_limit,
                "limit_unit": p.limit_unit,
                "limit_window": p.limit_window,
                "rate": _rate(p),
                "rate_unit": p.rate_unit,
                "max_connections": p.max_connections,
                "send_from": p.send_from,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return EX_OK
    for r in rows:
        _print_row(r)
    print("(lower priority numbers are tried first; health as the daemon last recorded it)")
    return EX_OK


def _health_line(r: dict[str, Any]) -> str:
    """A provider's health word, since when and why ("failing since ...: 451 ..."): one wording."""
    line = ProviderHealth(r["health"]).label
    if r["health_since"] is not None:
        line += f" since {when(r['health_since'])}"
    if r["health_reason"]:
        line += f": {r['health_reason']}"
    return line


def _print_row(r: dict[str, Any]) -> None:
    state = "enabled" if r["enabled"] else "disabled"
    unit = r["limit_unit"]
    limit = f"{r['daily_limit']} {unit}" if r["daily_limit"] is not None else f"no limit ({unit})"
    print(f"{r['id']}  ({r['caption'] or 'no caption'}; {state}, priority {r['priority']})")
    print(f"  health:      {_health_line(r)}")
    if r["cooldown_until"] is not None:
        print(f"  cooldown:    skipped until {when(r['cooldown_until'])}")
    if (pause := r["paused"]) is not None:
        end = "until resumed" if pause["until"] is None else f"until {when(pause['until'])}"
        print(f"  paused:      {end} by {pause['by']}: {pause['reason'] or 'no reason given'}")
    print(f"  server:      {r['server']} ({r['encryption']})")
    print(f"  credentials: {r['credentials']}")
    span = "last 24 h:  " if r["limit_window"] == "rolling_24h" else "today (UTC):"
    print(f"  {span} {r['sent_today']} sent / {limit}")
    connections = plural(cast(int, r["max_connections"]), "connection")
    print(f"  rate:        {r['rate'] or 'unlimited'}; {connections}")
    if r["send_from"]:
        print(f"  send_from:   {r['send_from']}")


def _rate(p: ProviderSettings) -> str | None:
    if p.rate is None:
        return None
    unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(p.rate.per)
    text = f"{p.rate.count}/{unit}" if unit else f"{p.rate.count}/{p.rate.per:g}s"
    return text if p.rate_unit == "messages" else f"{text} recipients"


def _by_priority(cfg: Config) -> list[str]:
    enabled = [p for p in cfg.providers if p.enabled]
    return [p.id for p in sorted(enabled, key=lambda p: p.priority)]


def _print_report(p: ProviderSettings, report: TestReport, health: dict[str, Any]) -> None:
    print(f"{p.id} ({p.host}:{p.port}, {p.encryption})")
    for step in report.steps:
        took = f"{step.elapsed * 1000:.0f} ms"
        print(f"  {'ok  ' if step.ok else 'FAIL'} {step.name:<9} {step.detail}  ({took})")
    word = ProviderHealth(health["health"])
    print(f"  deliveries: {_health_line(health)}")
    if report.ok and word.trouble:
        print(f"  => handshake OK, but deliveries through {p.id} are {word.label}")
    else:
        print(f"  => {'OK' if report.ok else 'FAILED'}")


async def cmd_test(args: argparse.Namespace) -> int:
    # Imported here: aiosmtplib and httpx are not needed by the rest of the CLI.
    from relay.outbound.probe import test_provider

    path = args.config_path_of(args)
    cfg: Config = await asyncio.to_thread(load, path, secrets=False)
    if args.id:
        try:
            chosen = [cfg.provider(args.id)]
        except KeyError:
            known = ", ".join(p.id for p in cfg.providers)
            print(f"sluice: no provider {args.id!r} (known: {known})", file=sys.stderr)
            return EX_USAGE
    else:
        chosen = [p for p in cfg.providers if p.enabled]
    # The secrets of the providers tested, and only those, must resolve (FILE:LINE if not).
    ids = {p.id for p in chosen}
    await asyncio.to_thread(load, path, secrets=lambda ref: ref.provider in ids)
    fqdn: str = await asyncio.to_thread(socket.getfqdn) if not cfg.smtp.hostname else ""
    hostname = cfg.smtp.hostname or fqdn
    reports = await asyncio.gather(
        *(test_provider(p, local_hostname=hostname, timeout=args.timeout) for p in chosen)
    )
    # The handshake is not the whole truth: deliveries may still fail (a 451 to
    # every recipient). Health as the daemon last recorded it goes with it.
    live = await _live(cfg)
    now = time.time()
    health = {p.id: _health(live[p.id], now) for p in chosen}
    if args.json:
        print(
            json.dumps(
                {p.id: asdict(r) | health[p.id] for p, r in zip(chosen, reports, strict=True)}
            )
        )
    else:
        for p, report in zip(chosen, reports, strict=True):
            _print_report(p, report, health[p.id])
    ok = all(r.ok for r in reports) and not any(
        ProviderHealth(h["health"]).trouble for h in health.values()
    )
    return EX_OK if ok else EX_UNAVAILABLE


async def cmd_connect(args: argparse.Namespace) -> int:
    # Imported here: httpx and the spool are not needed by the rest of the CLI.
    from relay.operations.actor import Actor
    from relay.operations.providers import save_sign_in
    from relay.outbound.device_flow import DeviceFlow, DeviceFlowError
    from relay.store.spool import Spool

    # Only this provider's client secret is needed (the refresh token is what we get).
    wanted = args.id
    cfg: Config = await asyncio.to_thread(
        load,
        args.config_path_of(args),
        secrets=lambda ref: ref.provider == wanted and ref.loc[-1] == "client_secret",
    )
    try:
        p = cfg.provider(args.id)
    except KeyError:
        known = ", ".join(q.id for q in cfg.providers)
        print(f"sluice: no provider {args.id!r} (known: {known})", file=sys.stderr)
        return EX_USAGE
    if p.oauth2 is None or not p.oauth2.device_authorization_url:
        print(
            f"sluice: provider {p.id} has no oauth2.device_authorization_url: "
            "nothing to sign in to (see config.example.yaml, Microsoft 365)",
            file=sys.stderr,
        )
        return EX_CONFIG
    o = p.oauth2
    try:
        secret = o.client_secret.resolve() if o.client_secret is not None else None
    except SecretError as exc:
        print(f"sluice: provider {p.id}: {exc}", file=sys.stderr)
        return EX_CONFIG
    flow = DeviceFlow(o, secret.get_secret_value() if secret is not None else None)
    try:
        code = await flow.start()
        minutes = max(1, round((code.expires_at - time.time()) / 60))
        print(f"To connect {p.id}, open {code.verification_uri}")
        print(f"and enter the code {code.user_code}")
        if code.verification_uri_complete:
            print(f"(or open {code.verification_uri_complete})")
        print(f"Waiting for the sign-in (the code expires in {minutes} min)...", flush=True)
        grant = await flow.wait(code)
    except DeviceFlowError as exc:
        print(f"sluice: {p.id}: {exc.text}", file=sys.stderr)
        return EX_UNAVAILABLE
    async with await Spool.open(cfg.spool) as spool:
        await save_sign_in(spool, p.id, grant.refresh_token, Actor.cli())
    print(f"{p.id}: connected; the refresh token is stored in the spool ({cfg.spool.where})")
    return EX_OK


def register(
    sub: Any,
    common: argparse.ArgumentParser,
    config_path: Callable[[argparse.Namespace], Path],
) -> None:
    """Add ``providers list`` and ``providers test`` to the ``sluice`` parser."""
    providers = sub.add_parser("providers", help="list providers or test a connection")
    psub = providers.add_subparsers(dest="providers_command", required=True, metavar="ACTION")
    p = psub.add_parser(
        "list", parents=[common], help="providers, today's usage and limits (secrets masked)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list, config_path_of=config_path)
    p = psub.add_parser(
        "test", parents=[common], help="connect, EHLO, TLS, AUTH and QUIT; print each reply"
    )
    p.add_argument("id", nargs="?", help="provider id (default: every enabled provider)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per step")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_test, config_path_of=config_path)
    p = psub.add_parser(
        "connect",
        parents=[common],
        help="sign an XOAUTH2 provider in (OAuth device code); store its refresh token",
    )
    p.add_argument("id", help="provider id")
    p.set_defaults(func=cmd_connect, config_path_of=config_path)
    register_providers(psub, common, config_path)
    provider_edits.register(psub, common, config_path)
