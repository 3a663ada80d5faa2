"""``sluice providers add|edit|remove|enable|disable``: the admin's provider forms, for scripts.

Each command goes through ``relay.operations.config_edits``, as the admin's
Save does: ``sluice check``'s rules, the connection test (unless
``--save-anyway``), the secret to a 0600 file in the secrets directory (never
the YAML), the atomic write, and the reload of the daemon when one runs
(``relay.cli.reload.request_reload``; without a daemon the file is saved and
taken at its next start). Refusals print one line per field, named by its
flag (``--password: the server answered: AUTH: 535 ...``).

A password is never a command-line argument (``ps`` shows those to every
user): ``--password-stdin`` reads it from standard input, ``--password-file
FILE`` from a file; either way it is stored in the secrets directory.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import Callable
from os import EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE
from pathlib import Path
from typing import Any

from relay.config import Config, MailboxSettings, ProviderSettings, load
from relay.config_edit import EditRefused
from relay.operations import config_edits as ops
from relay.operations.actor import Actor
from relay.presets import PRESETS, preset

__all__ = ["register"]

#: flag -> (form field, type); the form's fields, as flags
_FIELDS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--caption": ("caption", str),
    "--host": ("host", str),
    "--port": ("port", int),
    "--encryption": ("encryption", str),
    "--username": ("username", str),
    "--auth-mechanism": ("auth_mechanism", str),
    "--priority": ("priority", int),
    "--max-connections": ("max_connections", int),
    "--daily-limit": ("daily_limit", int),
    "--limit-unit": ("limit_unit", str),
    "--limit-window": ("limit_window", str),
    "--rate": ("rate", str),
    "--rate-unit": ("rate_unit", str),
    "--send-from": ("send_from", str),
    "--send-from-name": ("send_from_name", str),
    "--bounce-address": ("bounce_address", str),
    "--ca-file": ("ca_file", str),
    "--client-id": ("oauth2.client_id", str),
    "--token-url": ("oauth2.token_url", str),
}
_CHOICES = {
    "--encryption": ["none", "starttls", "tls"],
    "--auth-mechanism": ["auto", "plain", "login", "cram-md5", "xoauth2"],
    "--limit-unit": ["messages", "recipients"],
    "--limit-window": ["utc_day", "rolling_24h"],
    "--rate-unit": ["messages", "recipients"],
}
_BOOLS = {
    "tls_verify": "--tls-verify",
    "allow_insecure_auth": "--allow-insecure-auth",
    "pipelining": "--pipelining",
}


def _flag_of(field: str) -> str:
    for flag, (name, _) in _FIELDS.items():
        if name == field:
            return flag
    if field in _BOOLS:
        return _BOOLS[field]
    if field == "password":
        return "--password-stdin/--password-file"
    if field in ("enabled", "id"):
        return ""  # enable/disable and the positional id: the message says it
    return f"--{field.replace('_', '-')}" if field else ""


def _values(args: argparse.Namespace) -> dict[str, Any]:
    """The form fields the flags give (only those given)."""
    values: dict[str, Any] = {}
    for flag, (name, _) in _FIELDS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            values[name] = value
    for name in _BOOLS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    for name in getattr(args, "unset", None) or []:
        values[name.replace("-", "_")] = None
    return values


def _password(args: argparse.Namespace) -> str | None:
    """The password from standard input or a file (one line; its end removed), or None."""
    if args.password_stdin:
        text = sys.stdin.readline()
    elif args.password_file is not None:
        text = Path(args.password_file).read_text(encoding="utf-8")
    else:
        return None
    return text.rstrip("\r\n")


async def _context(args: argparse.Namespace) -> tuple[ops.EditContext, Config, bool]:
    """The edit context for this shell: the daemon's digest and reload if one runs."""
    from relay.cli.reload import request_reload
    from relay.outbound.probe import connection_answer
    from relay.store.lock import daemon_pid
    from relay.store.node_status import read_status
    from relay.store.spool import Spool

    path: Path = args.config_path_of(args)
    cfg: Config = await asyncio.to_thread(load, path, secrets=False)
    running = await asyncio.to_thread(daemon_pid, cfg.spool.path) is not None
    loaded = (
        await asyncio.to_thread(read_status, cfg.spool.path, "daemon.config_sha256")
        if running
        else None
    )
    fqdn: str = "" if cfg.smtp.hostname else await asyncio.to_thread(socket.getfqdn)
    hostname = cfg.smtp.hostname or fqdn
    timeout = float(args.timeout)

    async def check(p: ProviderSettings) -> str | None:
        return await connection_answer(p, local_hostname=hostname, timeout=timeout)

    async def check_mailbox(box: MailboxSettings) -> str | None:
        from relay.bounces.check import check_mailbox as real

        return await real(box)

    async def reload() -> str | None:
        result = await asyncio.to_thread(request_reload, cfg.spool.path)
        if not result.confirmed:
            return "the daemon did not answer the reload within 10 s"
        return result.error

    spool = await Spool.open(cfg.spool)
    ctx = ops.EditContext(
        config_path=path,
        spool=spool,
        secrets_dir=ops.secrets_dir_of(cfg, path),
        loaded_digest=loaded,
        check_provider=check,
        check_mailbox=check_mailbox,
        reload=reload if running else None,
        strict_env=False,
    )
    return ctx, cfg, running


def _refused(exc: EditRefused) -> int:
    if exc.errors:
        for e in exc.errors:
            flag = _flag_of(e.field)
            print(f"sluice: {flag + ': ' if flag else ''}{e.message}", file=sys.stderr)
    else:
        print(f"sluice: {exc.message}", file=sys.stderr)
    if exc.diff:
        print("what changed in the file since:", file=sys.stderr)
        print(exc.diff, file=sys.stderr, end="" if exc.diff.endswith("\n") else "\n")
        return EX_TEMPFAIL
    return EX_DATAERR


def _done(verb: str, pid: str, result: ops.EditResult, running: bool, path: Path) -> None:
    if not result.changed:
        print(f"{pid}: nothing to change in {path}")
        return
    where = (
        "the daemon reloaded it"
        if result.reloaded
        else "no daemon runs: it takes the file at its next start"
    )
    print(f"{verb} provider {pid} in {path} ({', '.join(result.changed)}); {where}")
    if result.connection_error:
        print(f"note: saved anyway; the connection test said: {result.connection_error}")
    if result.needs_sign_in:
        print(f"next: sign it in with `sluice providers connect {pid}`")


async def cmd_edit(args: argparse.Namespace) -> int:
    """add, edit, remove, enable, disable: one command, by ``args.action``."""
    action: str = args.action
    values = _values(args) if action in ("add", "edit") else {}
    if action == "add" and args.from_preset:
        try:
            chosen = preset(args.from_preset)
            base = chosen.values(region=args.region or "", tenant=args.tenant or "")
        except (KeyError, ValueError) as exc:
            print(f"sluice: {exc.args[0]}", file=sys.stderr)
            return EX_USAGE
        values = {**_flatten(base), **values}
    if action in ("add", "edit"):
        try:
            password = _password(args)
        except OSError as exc:
            print(f"sluice: --password-file: {exc.strerror or exc}", file=sys.stderr)
            return EX_USAGE
        if password is not None:
            values["password"] = password
    ctx, _, running = await _context(args)
    actor = Actor.cli()
    try:
        async with ctx.spool:
            if action == "add":
                values = {"id": args.id, **values}
                result = await ops.add_provider(
                    ctx, values, actor, base_digest=None, save_anyway=args.save_anyway
                )
                _done("added", args.id, result, running, ctx.config_path)
            elif action == "edit":
                result = await ops.edit_provider(
                    ctx, args.id, values, actor, base_digest=None, save_anyway=args.save_anyway
                )
                _done("edited", args.id, result, running, ctx.config_path)
            elif action == "remove":
                waiting = await ops.removal_impact(ctx.spool, args.id)
                result = await ops.remove_provider(ctx, args.id, actor, base_digest=None)
                _done("removed", args.id, result, running, ctx.config_path)
                if waiting:
                    print(
                        f"{waiting} queued recipient(s) last went through {args.id}: "
                        "the other providers take them at their next attempt"
                    )
            else:
                enabled = action == "enable"
                result = await ops.set_provider_enabled(
                    ctx, args.id, enabled, actor, base_digest=None
                )
                _done(f"{action}d", args.id, result, running, ctx.config_path)
    except EditRefused as exc:
        return _refused(exc)
    return EX_OK


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def register(
    psub: Any, common: argparse.ArgumentParser, config_path: Callable[[argparse.Namespace], Path]
) -> None:
    """Add ``add``, ``edit``, ``remove``, ``enable`` and ``disable`` to ``sluice providers``."""
    for action, text in (
        ("add", "add a provider to the config file (checked, connection tried, reloaded)"),
        ("edit", "change a provider's settings in the config file (only the flags given)"),
    ):
        p: argparse.ArgumentParser = psub.add_parser(action, parents=[common], help=text)
        p.add_argument("id", help="provider id")
        for flag, (_, kind) in _FIELDS.items():
            p.add_argument(flag, type=kind, choices=_CHOICES.get(flag), default=None)
        for name, flag in _BOOLS.items():
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        secret = p.add_mutually_exclusive_group()
        secret.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        secret.add_argument("--password-file", metavar="FILE", help="read the password from FILE")
        p.add_argument(
            "--save-anyway",
            action="store_true",
            help="save even if the connection test fails (an account being prepared)",
        )
        p.add_argument("--timeout", type=float, default=15.0, help="seconds per connection step")
        if action == "add":
            p.add_argument("--from-preset", choices=list(PRESETS), metavar="NAME")
            p.add_argument("--region", help="Amazon SES region (with --from-preset ses)")
            p.add_argument("--tenant", help="Microsoft 365 tenant (--from-preset microsoft365)")
        else:
            p.add_argument(
                "--unset",
                action="append",
                metavar="KEY",
                help="remove a key from the provider (its default applies); repeatable",
            )
        p.set_defaults(func=cmd_edit, action=action, config_path_of=config_path)
    for action, text in (
        ("remove", "remove a provider from the config file (its queued mail goes to the others)"),
        ("enable", "enable a provider in the config file"),
        ("disable", "disable a provider in the config file (never the last enabled one)"),
    ):
        p = psub.add_parser(action, parents=[common], help=text)
        p.add_argument("id", help="provider id")
        p.add_argument("--timeout", type=float, default=15.0, help=argparse.SUPPRESS)
        p.set_defaults(func=cmd_edit, action=action, config_path_of=config_path)
