"""``sluice queue hold|release|reroute`` and ``sluice providers pause|resume``.

Operator controls, as ``postsuper -h/-H`` and KumoMTA's ``kcli rebind`` do
them: each opens the spool and calls ``relay.operations`` (the daemon needs
not run, and picks the change up at its next look, within a second for
pauses), which writes it to the spool's audit log as ``cli:$USER``.

A selection is queue IDs and/or filters (``--sender``, ``--recipient-domain``,
``--provider``, ``--stream``, ``--older-than``, ``--status``); every given
criterion must match. ``--all`` says "everything" on purpose; without any
criterion nothing is done. ``--dry-run`` only counts.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from os import EX_NOINPUT, EX_OK, EX_USAGE
from pathlib import Path
from typing import Any

from relay.config import Config, load, parse_duration
from relay.model import Action, RecipientStatus, Selection
from relay.operations import providers as provider_ops
from relay.operations import queue as queue_ops
from relay.operations.actor import Actor, Refused
from relay.store.spool import Spool
from relay.wording import plural, when

__all__ = ["register_providers", "register_queue"]


def _config(args: argparse.Namespace) -> Config:
    path: Path = args.config_path_of(args)
    return load(path, secrets=False)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def selection_of(args: argparse.Namespace) -> Selection:
    return Selection(
        queue_ids=tuple(args.queue_id),
        sender=args.sender,
        recipient_domain=args.recipient_domain,
        provider=args.provider,
        stream=args.stream,
        older_than=args.older_than,
        statuses=tuple(RecipientStatus(s) for s in args.status or ()),
        everything=args.all,
    )


async def cmd_control(args: argparse.Namespace) -> int:
    cfg = _config(args)
    selection = selection_of(args)
    if selection.empty:
        print("sluice: give queue IDs, a filter, or --all", file=sys.stderr)
        return EX_USAGE
    request = queue_ops.ControlRequest(
        action=Action(args.action),
        selection=selection,
        reason=getattr(args, "reason", "") or "",
        via=getattr(args, "via", None),
    )
    try:
        queue_ops.check(cfg, request)
    except Refused as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_USAGE
    async with await Spool.open(cfg.spool) as spool:
        if args.dry_run:
            n = await queue_ops.count(spool, cfg, request)
            print(
                f"would {n.action} {plural(n.recipients, 'recipient')} "
                f"of {plural(n.messages, 'message')}"
            )
            _warn_paused(n)
            return EX_OK
        done = await queue_ops.control(spool, cfg, request, Actor.cli())
    print(f"{done.action.past} {plural(done.recipients, 'recipient')} ({done.selection})")
    _warn_paused(done)
    return EX_OK if done.recipients or not selection.queue_ids else EX_NOINPUT


def _warn_paused(result: queue_ops.Controlled) -> None:
    """A reroute via a paused provider: the recipients wait for the resume; say so."""
    pause = result.via_paused
    if pause is None:
        return
    if pause.provider == provider_ops.ALL_PROVIDERS:
        subject, resume = "all providers are", "--all"
    else:
        subject, resume = f"provider {pause.provider} is", pause.provider
    why = f" ({pause.reason})" if pause.reason else ""
    end = f"until {when(pause.until)}" if pause.until is not None else "until resumed"
    print(
        f"sluice: warning: {subject} paused{why} {end}: the rerouted recipients wait for it "
        f"(`sluice providers resume {resume}`)",
        file=sys.stderr,
    )


def register_queue(
    qsub: Any, common: argparse.ArgumentParser, config_path: Callable[..., Path]
) -> None:
    """Add ``hold``, ``release`` and ``reroute`` to ``sluice queue``."""
    for action, text in (
        ("hold", "hold recipients: they are not delivered until released"),
        ("release", "release held recipients: due now"),
        ("reroute", "retry recipients via one provider (their next attempt only)"),
    ):
        p: argparse.ArgumentParser = qsub.add_parser(action, parents=[common], help=text)
        p.add_argument("queue_id", nargs="*", help="queue IDs (with filters: both must match)")
        p.add_argument("--sender", help="envelope sender (exact, any case)")
        p.add_argument("--recipient-domain", help="recipient domain (exact, any case)")
        p.add_argument("--provider", help="the provider that last answered for the recipient")
        p.add_argument(
            "--stream", help="the message's stream (suppression.stream_headers; any case)"
        )
        p.add_argument("--older-than", type=_duration, metavar="AGE", help="e.g. 30m, 2h")
        p.add_argument("--status", action="append", choices=[s.value for s in RecipientStatus])
        p.add_argument("--all", action="store_true", help="everything (no other criterion)")
        p.add_argument("--dry-run", action="store_true", help="only count")
        if action == "hold":
            p.add_argument("--reason", default="", help="shown as the recipients' reason")
        if action == "reroute":
            p.add_argument("--via", required=True, metavar="PROVIDER", help="provider id")
        p.set_defaults(func=cmd_control, action=action, config_path_of=config_path)


async def cmd_pause(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.all == bool(args.id):
        print("sluice: give a provider id or --all (not both)", file=sys.stderr)
        return EX_USAGE
    target: str = provider_ops.ALL_PROVIDERS if args.all else args.id
    try:
        provider_ops.check_provider(cfg, target)
    except Refused as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_USAGE
    async with await Spool.open(cfg.spool) as spool:
        if args.pause:
            try:
                paused = await provider_ops.pause(
                    spool,
                    cfg,
                    target,
                    Actor.cli(),
                    reason=args.reason,
                    duration=args.duration,
                    now=time.time(),
                )
            except Refused as exc:
                print(f"sluice: --for: {exc}", file=sys.stderr)
                return EX_USAGE
            end = f"until {when(paused.until)}" if paused.until is not None else "until resumed"
            print(f"{paused.name}: delivery paused {end}; mail is still accepted")
            return EX_OK
        resumed = await provider_ops.resume(spool, cfg, target, Actor.cli())
    if resumed.due_now is None:
        print(f"{resumed.name}: was not paused")
        return EX_OK
    print(
        f"{resumed.name}: delivery resumed; {plural(resumed.due_now, 'waiting recipient')} due now"
    )
    return EX_OK


def register_providers(
    psub: Any, common: argparse.ArgumentParser, config_path: Callable[..., Path]
) -> None:
    """Add ``pause`` and ``resume`` to ``sluice providers``."""
    p: argparse.ArgumentParser = psub.add_parser(
        "pause", parents=[common], help="stop delivering through a provider (mail is still taken)"
    )
    p.add_argument("id", nargs="?", help="provider id")
    p.add_argument("--all", action="store_true", help="every provider")
    p.add_argument("--for", dest="duration", type=_duration, metavar="DURATION", help="e.g. 2h")
    p.add_argument("--reason", default="", help="shown on the queue, the admin and /healthz")
    p.set_defaults(func=cmd_pause, pause=True, config_path_of=config_path)
    p = psub.add_parser("resume", parents=[common], help="end a pause; waiting mail is due now")
    p.add_argument("id", nargs="?", help="provider id")
    p.add_argument("--all", action="store_true", help="the pause of every provider")
    p.set_defaults(func=cmd_pause, pause=False, config_path_of=config_path)
