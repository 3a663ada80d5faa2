"""``sluice suppression ...`` (list, show, add, remove, import, export) and ``sluice bounces ...``.

The suppression commands act on the spool through ``relay.operations.suppressions``
(the checks and the CSV codec the admin uses too), beside a running daemon
(its scheduler reads the list at every attempt). The bounce
commands reach the configured bounce mailbox; like the queue commands they
need no provider secret, only the mailbox's own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from os import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_OK, EX_UNAVAILABLE, EX_USAGE
from pathlib import Path
from typing import Any, TypeVar

from relay.bounces.mailbox import Mailbox, MailboxError
from relay.bounces.poller import BouncePoller
from relay.config import Config, load
from relay.logsetup import config_secrets
from relay.operations import suppressions as sup_ops
from relay.operations.actor import Actor, Refused
from relay.secrets import Redactor
from relay.store.spool import Spool
from relay.store.suppressions import SOURCES, normalize
from relay.wording import plural, when

_T = TypeVar("_T")

__all__ = ["register"]


def _cfg(args: argparse.Namespace) -> Config:
    path: Path = args.config_path_of(args)
    return load(path, secrets=False)


async def cmd_list(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    async with await Spool.open(cfg.spool) as spool:
        entries = await spool.suppressions.page(
            search=args.search, scope=args.scope, source=args.source, limit=args.limit
        )
    if args.json:
        print(json.dumps([asdict(e) for e in entries], indent=1))
        return EX_OK
    if not entries:
        filtered = args.search or args.scope or args.source
        print("no matching entries" if filtered else "no suppressed addresses")
        return EX_OK
    print(f"{'ADDRESS':<40} {'SCOPE':<12} {'SOURCE':<7} {'SINCE':<23} REASON")
    for e in entries:
        scope = e.scope or "(all)"
        expiry = f" (until {when(e.expires_at)})" if e.expires_at else ""
        print(
            f"{e.address:<40} {scope:<12} {e.source:<7} {when(e.created_at):<23} {e.reason}{expiry}"
        )
    return EX_OK


async def cmd_show(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    async with await Spool.open(cfg.spool) as spool:
        entries = await spool.suppressions.page(search=normalize(args.address), limit=100)
        entries = [e for e in entries if e.address == normalize(args.address)]
        bounces = await spool.suppressions.bounces_of(args.address)
    if not entries and not bounces:
        print(f"sluice: {normalize(args.address)} is not suppressed and has no bounces")
        return EX_NOINPUT
    for e in entries:
        print(f"suppressed ({e.scope or 'every stream'}) since {when(e.created_at)} by {e.source}")
        print(f"  reason: {e.reason}" + (f"; until {when(e.expires_at)}" if e.expires_at else ""))
    if bounces:
        print(f"{plural(len(bounces), 'bounce')}:")
    for b in bounces:
        print(
            f"  {when(b.received_at)} {b.kind:<4} {b.status or '-':<7} {b.source:<4} "
            f"{b.queue_id or '-'} {b.diagnostic}"
        )
    return EX_OK


async def cmd_add(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    try:
        expires = sup_ops.expiry(time.time(), expires_in=args.expires)
    except Refused as exc:
        print(f"sluice: --expires: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        # Every address is checked before any is added: all or none, as an import.
        addresses = [sup_ops.check_address(a) for a in args.address]
        sup_ops.check_scope(args.scope)
    except Refused as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_DATAERR
    async with await Spool.open(cfg.spool) as spool:
        for address in addresses:
            await sup_ops.suppress(
                spool,
                address,
                Actor.cli(),
                scope=args.scope,
                reason=args.reason,
                expires_at=expires,
            )
    scope = f" for {args.scope}" if args.scope else ""
    print(f"suppressed {plural(len(addresses), 'address', 'addresses')}{scope}")
    return EX_OK


async def cmd_remove(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    removed = 0
    async with await Spool.open(cfg.spool) as spool:
        try:
            for address in args.address:
                done = await sup_ops.unsuppress(spool, address, Actor.cli(), scope=args.scope)
                removed += done.removed
        except Refused as exc:
            print(f"sluice: {exc}", file=sys.stderr)
            return EX_DATAERR
    print(f"removed {plural(removed, 'entry', 'entries')}")
    return EX_OK if removed else EX_NOINPUT


async def cmd_import(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    try:
        data = (
            sys.stdin.buffer.read()
            if args.file == "-"
            else await asyncio.to_thread(Path(args.file).read_bytes)
        )
    except OSError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_NOINPUT
    async with await Spool.open(cfg.spool) as spool:
        try:
            done = await sup_ops.import_csv(spool, data, Actor.cli(), default_scope=args.scope)
        except sup_ops.RowRefused as exc:
            print(f"sluice: {args.file}:{exc.line}: {exc.problem}", file=sys.stderr)
            return EX_DATAERR
        except Refused as exc:
            print(f"sluice: {args.file}: {exc}", file=sys.stderr)
            return EX_DATAERR
    print(f"imported {plural(done.count, 'entry', 'entries')}")
    return EX_OK


async def cmd_export(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    async with await Spool.open(cfg.spool) as spool:
        text, n = await sup_ops.export_csv(spool, scope=args.scope, source=args.source)
    if args.file == "-":
        sys.stdout.write(text)
    else:
        await asyncio.to_thread(Path(args.file).write_text, text, encoding="utf-8")
        print(f"exported {plural(n, 'entry', 'entries')} to {args.file}")
    return EX_OK


async def _ask_mailbox(cfg: Config, ask: Callable[[BouncePoller], Awaitable[_T]]) -> _T | int:
    """``ask`` a poller of the configured bounce mailbox; an exit code when it cannot."""
    if cfg.bounces.mailbox is None:
        print("sluice: no bounces.mailbox is configured", file=sys.stderr)
        return EX_CONFIG
    async with await Spool.open(cfg.spool) as spool:
        spool.redact = Redactor(config_secrets(cfg))  # bounces it stores are masked as the daemon's
        try:
            return await ask(BouncePoller(spool.suppressions, lambda: cfg))
        except MailboxError as exc:
            print(f"sluice: bounce mailbox: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE


async def cmd_poll(args: argparse.Namespace) -> int:
    result = await _ask_mailbox(_cfg(args), BouncePoller.poll_once)
    if isinstance(result, int):
        return result
    print(
        f"read {result.fetched}: {result.bounces} bounces, {result.not_bounces} not bounces, "
        f"{result.unreadable} unreadable, {result.too_large} too large, "
        f"{result.unmatched} unmatched"
    )
    for address in result.suppressed:
        print(f"now suppressed: {address}")
    if result.unmatched:
        bounces = plural(result.unmatched, "unmatched bounce")
        print(f"{bounces} (about no mail Sluice sent them): not counted")
    for line in result.unmatched_lines:
        print(f"unmatched {line}")
    for line in result.skipped:
        print(f"skipped {line}")
    return EX_OK


async def cmd_folders(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    folders = await _ask_mailbox(cfg, BouncePoller.folders)
    if isinstance(folders, int):
        return folders
    chosen = cfg.bounces.mailbox.folder if cfg.bounces.mailbox is not None else ""
    for name in folders:
        print(f"{'*' if name == chosen else ' '} {name}")
    if chosen not in folders:
        print(f"sluice: bounces.mailbox.folder {chosen!r} is not among them", file=sys.stderr)
        return EX_CONFIG
    return EX_OK


async def cmd_test(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    box = cfg.bounces.mailbox
    if box is None:
        print("sluice: no bounces.mailbox is configured", file=sys.stderr)
        return EX_CONFIG
    password = None
    if box.password is not None:
        try:
            password = box.password.resolve().get_secret_value()
        except LookupError as exc:
            print(f"sluice: bounces.mailbox.password: {exc}", file=sys.stderr)
            return EX_CONFIG

    def probe() -> None:
        with Mailbox(box, password=password) as mb:
            mb.fetch_new(limit=0)  # selects the folder: it exists and may be read

    try:
        await asyncio.to_thread(probe)
    except MailboxError as exc:
        print(f"FAIL {box.host}:{box.effective_port} ({box.encryption}): {exc}")
        return EX_UNAVAILABLE
    print(
        f"ok   {box.host}:{box.effective_port} ({box.encryption}): logged in, {box.folder} opened"
    )
    return EX_OK


def register(
    sub: Any,
    common: argparse.ArgumentParser,
    config_path: Callable[[argparse.Namespace], Path],
) -> None:
    """Add ``suppression`` and ``bounces`` to the ``sluice`` parser."""

    def add(parent: Any, name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=func, config_path_of=config_path)
        return p

    sup = sub.add_parser("suppression", help="the suppressed-addresses list")
    ssub = sup.add_subparsers(dest="suppression_command", required=True, metavar="ACTION")
    p = add(ssub, "list", cmd_list, "suppressed addresses, in address order")
    p.add_argument("--search", help="part of an address")
    p.add_argument("--scope", help="only entries of this stream ('' for the global ones)")
    p.add_argument("--source", choices=SOURCES)
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--json", action="store_true")
    p = add(ssub, "show", cmd_show, "one address: its entries and every bounce")
    p.add_argument("address")
    p = add(ssub, "add", cmd_add, "suppress addresses (source: manual)")
    p.add_argument("address", nargs="+")
    p.add_argument("--scope", default="", help="only for this stream (default: every stream)")
    p.add_argument("--reason", default="added by hand")
    p.add_argument("--expires", help="lift it after this long (e.g. 30d)")
    p = add(ssub, "remove", cmd_remove, "take addresses off the list (mail to them goes again)")
    p.add_argument("address", nargs="+")
    p.add_argument("--scope", default=None, help="only this stream's entry (default: all)")
    p = add(ssub, "import", cmd_import, "add entries from CSV (an 'address' column at least)")
    p.add_argument("file", help="a CSV file, or - for standard input")
    p.add_argument("--scope", default="", help="for rows without a scope column")
    p = add(ssub, "export", cmd_export, "write the list as CSV")
    p.add_argument("file", nargs="?", default="-", help="a file (default: standard output)")
    p.add_argument("--scope")
    p.add_argument("--source", choices=SOURCES)

    bounces = sub.add_parser("bounces", help="the bounce mailbox")
    bsub = bounces.add_subparsers(dest="bounces_command", required=True, metavar="ACTION")
    add(bsub, "poll", cmd_poll, "read new bounces now (as the daemon does every poll_interval)")
    add(bsub, "folders", cmd_folders, "list the mailbox's folders (* marks bounces.mailbox.folder)")
    add(bsub, "test", cmd_test, "connect, log in and open the folder")
