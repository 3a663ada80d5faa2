"""The ``sluice`` command: thin subcommands over the daemon and the spool.

Exit codes follow sysexits(3): 0 ok, 64 usage, 69 unavailable, 75 temporary
failure, 78 configuration error. They are the stdlib's ``os.EX_*`` (Unix
only, as Sluice is), in every module that exits: the stdlib has each one
Sluice uses, so none is written out by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import inspect
import json
import os
import select
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from os import EX_CONFIG, EX_NOINPUT, EX_NOPERM, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from relay import __version__
from relay.cli import bounces as bounce_cli
from relay.cli import controls
from relay.cli import dkim as dkim_cli
from relay.cli import providers as provider_cli
from relay.config import Config, load, load_structure
from relay.errors import ConfigError, ListenError, SpoolError, UnknownMessage
from relay.model import RecipientStatus
from relay.operations import queue as queue_ops
from relay.operations.actor import Actor
from relay.operations.sessions import revoke_admin_sessions
from relay.runner import run_fast, settle_heap
from relay.store.spool import Spool
from relay.wording import plural, when

if TYPE_CHECKING:
    from relay.daemon import Daemon

__all__ = ["main"]


DEFAULT_CONFIG = "/etc/sluice/config.yaml"

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
#: a command that runs without an event loop (one that prompts at a terminal)
SyncCommand = Callable[[argparse.Namespace], int]

#: the exit status of a command stopped by Ctrl-C, as a shell reports it (128 + SIGINT)
_INTERRUPTED = 128 + signal.SIGINT


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("SLUICE_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> Config:
    """The config with every secret resolved: for ``serve`` and ``check``."""
    return load(_config_path(args))


def _load_without_secrets(args: argparse.Namespace) -> Config:
    """The config for commands that connect to no provider (the queue commands).

    They run in an operator's shell, which need not have the service's
    environment variables or systemd credentials.
    """
    return load(_config_path(args), secrets=False)


# ----------------------------------------------------------------- commands


async def cmd_serve(args: argparse.Namespace) -> int:
    # Imported when used: `sluice sendmail` and the queue commands start without
    # the daemon's imports (uvicorn, aiosmtplib: about 0.3 s per run).
    from relay import logsetup
    from relay.config_edit import load_with_text
    from relay.daemon import Daemon

    # One read: the daemon keeps the text it runs (config edits compare the file with it).
    cfg, text = load_with_text(_config_path(args))
    logsetup.configure(cfg.log.level, cfg.log.format, secrets=logsetup.config_secrets(cfg))
    daemon = Daemon(cfg, config_path=_config_path(args), config_text=text)
    # The heap is settled here, in the process `sluice serve` owns, not in
    # Daemon: an embedding (the tests run daemons in-process) keeps its own.
    settling = asyncio.get_running_loop().create_task(_settle_when_ready(daemon))
    try:
        await daemon.serve()
    finally:
        settling.cancel()
    return EX_OK


async def _settle_when_ready(daemon: Daemon) -> None:
    await daemon.ready.wait()
    settle_heap()


async def cmd_check(args: argparse.Namespace) -> int:
    cfg = _load(args)
    enabled = [p.id for p in cfg.providers if p.enabled]
    print(
        f"{_config_path(args)}: OK ({plural(len(cfg.providers), 'provider')}, "
        f"enabled: {', '.join(enabled)})"
    )
    return EX_OK


async def cmd_reload(args: argparse.Namespace) -> int:
    # Imported when used: only `sluice reload` signals a daemon.
    from relay.cli.reload import other_config, request_reload

    path = _config_path(args)
    # Refuse to signal the daemon with a file that does not validate. Secrets
    # and ${VAR}s are the daemon's to check (this shell may lack its
    # environment and credentials); it reports back, and that is shown below.
    cfg = load_structure(path)
    try:
        result = await asyncio.to_thread(request_reload, cfg.spool.path, wait=args.wait)
    except ProcessLookupError as exc:
        print(f"sluice: {exc.strerror}", file=sys.stderr)
        return EX_UNAVAILABLE
    except PermissionError:
        print(f"sluice: not allowed to signal the daemon on {cfg.spool.path}", file=sys.stderr)
        return EX_NOPERM
    other = await asyncio.to_thread(other_config, result, path)
    if other is not None:
        print(f"sluice: note: the daemon reads {other[0]}, not {other[1]}")
    if not result.confirmed:
        print(f"sluice: sent SIGHUP to pid {result.pid}; no answer within {args.wait:g}s")
        return EX_TEMPFAIL
    if result.error:
        print(f"sluice: reload failed, still running the old configuration: {result.error}")
        return EX_CONFIG
    print(f"sluice: pid {result.pid} reloaded its configuration")
    return EX_OK


async def cmd_queue_list(args: argparse.Namespace) -> int:
    cfg = _load_without_secrets(args)
    statuses = [RecipientStatus(s) for s in args.status] if args.status else None
    async with await Spool.open(cfg.spool) as spool:
        # One more than shown: whether the list was cut is then known, not guessed.
        entries = await spool.list_queue(
            statuses=statuses, search=args.search, limit=args.limit + 1
        )
        fleet = spool.shared
    cut = len(entries) > args.limit
    entries = entries[: args.limit]
    if cut:
        # On stderr, so that stdout stays the list (and --json stays JSON).
        print(
            f"sluice: showing the newest {plural(args.limit, 'recipient')}; there are more "
            "(--limit N shows more; --status and --search narrow the list)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([asdict(e) for e in entries], default=str, indent=1))
        return EX_OK
    if not entries:
        print("queue is empty" if statuses is None else "no matching recipients")
        return EX_OK
    # A store shared by a fleet: which node accepted each message (on one host, no column).
    head = f"{'NODE':<16} " if fleet else ""
    print(
        f"{'QUEUE ID':<17} {head}{'STATUS':<9} {'TRIES':>5} {'NEXT ATTEMPT':<23} RECIPIENT / REASON"
    )
    for e in entries:
        node = f"{e.node or '-':<16} " if fleet else ""
        print(
            f"{e.queue_id:<17} {node}{e.status.value:<9} {e.attempts:>5} "
            f"{when(e.next_attempt_at):<23} {e.email}"
        )
        if e.reason:
            print(f"{'':<17} {e.reason[:200]}")
    return EX_OK


async def cmd_queue_show(args: argparse.Namespace) -> int:
    cfg = _load_without_secrets(args)
    async with await Spool.open(cfg.spool) as spool:
        detail = await spool.get(args.queue_id)
        raw = await spool.body(detail.message_id) if args.raw else b""
        fleet = spool.shared
    if args.raw:
        sys.stdout.buffer.write(raw)
        return EX_OK
    on = f" on node {detail.node or '-'}" if fleet else ""
    print(
        f"Queue ID:  {detail.queue_id}\nFrom:      <{detail.sender}>\n"
        f"Subject:   {detail.subject}\nReceived:  {when(detail.received_at)} from "
        f"{detail.client} ({detail.helo}){on}\nSize:      {plural(detail.size, 'byte')}\n"
    )
    for r in detail.recipients:
        origin = f" ({r.origin})" if r.origin else ""
        print(
            f"  <{r.email}>{origin} {r.status.value}, {plural(r.attempts, 'attempt')}, "
            f"next {when(r.next_attempt_at)}: {r.reason}"
        )
    if detail.attempts:
        print("\nAttempts:")
        for a in detail.attempts:
            by = f" by {a.node or '-'}" if fleet else ""
            print(
                f"  {when(a.started_at)} <{a.email}> via {a.provider or '-'}{by}: "
                f"{a.status.value} {a.reason}"
            )
    return EX_OK


async def cmd_queue_retry(args: argparse.Namespace) -> int:
    cfg = _load_without_secrets(args)
    async with await Spool.open(cfg.spool) as spool:
        acted = await queue_ops.retry(spool, args.queue_id, Actor.cli())
    for qid in acted.done:
        # The recipients' state now, as postqueue -i users read it: "2 recipients due now".
        print(f"{qid}: {plural(acted.recipients[qid], 'recipient')} due now")
    return _missing(acted)


async def cmd_queue_delete(args: argparse.Namespace) -> int:
    cfg = _load_without_secrets(args)
    async with await Spool.open(cfg.spool) as spool:
        acted = await queue_ops.delete(spool, args.queue_id, Actor.cli())
    for qid in acted.done:
        print(f"{qid}: {acted.action.past}")
    return _missing(acted)


def _missing(acted: queue_ops.Acted) -> int:
    """EX_NOINPUT, and each unknown queue ID named, when any was not in the queue."""
    for qid in acted.missing:
        print(f"sluice: no message with queue ID {qid}", file=sys.stderr)
    return EX_NOINPUT if acted.missing else EX_OK


def cmd_admin_hash_password(args: argparse.Namespace) -> int:
    """Print an argon2 hash for ``admin.password_hash`` (password from a TTY or stdin).

    Run without an event loop, on purpose: under ``asyncio.run`` the first
    Ctrl-C only cancels the main task, which cannot happen while ``getpass``
    blocks in a read, so the prompt hung until a second Ctrl-C. Here Ctrl-C
    is a plain ``KeyboardInterrupt`` (exit 130 at once), and Ctrl-D (end of
    input) is a one-line message instead of an ``EOFError`` traceback.
    """
    # Imported when used: argon2 is only for this command (and the admin).
    import getpass

    from admin.auth import hash_password

    if sys.stdin.isatty():
        try:
            password = getpass.getpass("New admin password: ")
            repeated = getpass.getpass("Repeat it: ")
        except EOFError:
            # getpass leaves the cursor after the prompt; end that line first.
            print("\nsluice: no password entered (end of input)", file=sys.stderr)
            return EX_USAGE
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return _INTERRUPTED
        if repeated != password:
            print("sluice: the passwords differ", file=sys.stderr)
            return EX_USAGE
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("sluice: empty password", file=sys.stderr)
        return EX_USAGE
    print(hash_password(password))
    return EX_OK


async def cmd_admin_revoke_sessions(args: argparse.Namespace) -> int:
    """End every admin session (cookies issued before now are refused from now on)."""
    # Only the spool path is needed: secrets and ${VAR}s may be the daemon's alone.
    cfg = load_structure(_config_path(args))
    async with await Spool.open(cfg.spool) as spool:
        revoked = await revoke_admin_sessions(spool, Actor.cli())
    print(f"sluice: every admin session ended (session version {revoked.version})")
    return EX_OK


async def cmd_demo(args: argparse.Namespace) -> int:
    # Imported when used: `sluice sendmail` and the queue commands start without
    # the daemon's imports (uvicorn, aiosmtplib: about 0.3 s per run).
    from relay import logsetup
    from relay.cli.demo import DemoPorts, run_demo

    logsetup.configure_plain("info")
    ports = DemoPorts(smtp=args.smtp_port, admin=args.admin_port, sink=args.sink_port)
    return await run_demo(Path(args.dir), ports)


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is less than 1")
    return number


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 meaning "any free one"."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (0-65535)")
    return port


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 64 (EX_USAGE, as docs/operating.md says), not 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _listen_hint(exc: ListenError, args: argparse.Namespace) -> str:
    """One line: which address, why, and what to change."""
    if args.func is cmd_demo:
        flag = _DEMO_FLAGS.get(exc.setting, "--smtp-port/--admin-port")
        change = f"run `sluice demo {flag} PORT` (0 picks a free port)"
    else:
        change = f"change {exc.setting} in {_config_path(args)}"
    if exc.reason == os.strerror(errno.EADDRINUSE):
        change = f"another program uses that port: stop it or {change}"
    return f"sluice: {exc}; {change}"


_DEMO_FLAGS = {
    "smtp.listen": "--smtp-port",
    "admin.listen": "--admin-port",
    "demo sink": "--sink-port",
}


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sluice", description="Local SMTP relay daemon.")
    parser.add_argument("--version", action="version", version=f"sluice {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "-c", "--config", help=f"config file (default: $SLUICE_CONFIG or {DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Command | SyncCommand, help: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=help)
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the daemon")
    add("check", cmd_check, "validate the config file and exit")
    p = add("reload", cmd_reload, "validate the config, then make the running daemon reload it")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the outcome")
    sub.add_parser(
        "sendmail",
        help="sendmail-compatible submission (also when run through a link named sendmail)",
        add_help=False,
    )

    queue = sub.add_parser("queue", help="list and act on queued mail")
    qsub = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    p = add("list", cmd_queue_list, "list queued recipients, newest first", qsub)
    p.add_argument("--status", action="append", choices=[s.value for s in RecipientStatus])
    p.add_argument("--search", help="substring of recipient, sender or subject; or a queue ID")
    p.add_argument(
        "--limit", type=_positive, default=100, help="show at most this many (default 100)"
    )
    p.add_argument("--json", action="store_true")
    p = add("show", cmd_queue_show, "show one message, its recipients and attempts", qsub)
    p.add_argument("queue_id")
    p.add_argument("--raw", action="store_true", help="print the stored message bytes")
    p = add("retry", cmd_queue_retry, "make a message due now (also failed ones)", qsub)
    p.add_argument("queue_id", nargs="+")
    p = add("delete", cmd_queue_delete, "delete a message from the queue", qsub)
    p.add_argument("queue_id", nargs="+")
    controls.register_queue(qsub, common, _config_path)

    admin = sub.add_parser("admin", help="admin page helpers")
    asub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    add("hash-password", cmd_admin_hash_password, "print a hash for admin.password_hash", asub)
    add(
        "revoke-sessions",
        cmd_admin_revoke_sessions,
        "log every admin session out (e.g. after a cookie leaked)",
        asub,
    )

    provider_cli.register(sub, common, _config_path)
    bounce_cli.register(sub, common, _config_path)
    dkim_cli.register(sub, common, _config_path)

    p = sub.add_parser("demo", help="run Sluice against a local catch-all sink (quick start)")
    p.add_argument("--dir", default="var", help="where the demo config and spool go")
    for name, default, what in (
        ("smtp", 2525, "Sluice's SMTP listener"),
        ("admin", 8025, "the admin page"),
        ("sink", 2526, "the catch-all sink"),
    ):
        p.add_argument(
            f"--{name}-port",
            type=_port,
            default=default,
            metavar="PORT",
            help=f"port of {what} on 127.0.0.1 (default {default}; 0 picks a free one)",
        )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
        # Linked as /usr/sbin/sendmail (or mailq-style names): behave as sendmail.
        if os.path.basename(sys.argv[0]) == "sendmail":
            # Imported when used: a sendmail run loads no more than it needs.
            from relay.inbound import sendmail

            return sendmail.main(argv)
    if argv and argv[0] == "sendmail":
        from relay.inbound import sendmail

        return sendmail.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        code: int
        if inspect.iscoroutinefunction(args.func):
            run = run_fast if args.func is cmd_serve else asyncio.run
            code = run(args.func(args))
        else:
            code = args.func(args)
        # Flushed here, not at interpreter exit, so that a closed pipe is seen below.
        sys.stdout.flush()
        return code
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"sluice: {issue}", file=sys.stderr)
        return EX_CONFIG
    except UnknownMessage as exc:
        print(f"sluice: no message with queue ID {exc}", file=sys.stderr)
        return EX_NOINPUT
    except SpoolError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except ListenError as exc:
        # Restarting will not free the port: one line, no traceback (systemd's
        # RestartPreventExitStatus= lists 69 for this reason).
        print(_listen_hint(exc, args), file=sys.stderr)
        return EX_UNAVAILABLE
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # `sluice queue list | head`: the reader has what it wanted. Exit as a
            # Unix tool killed by SIGPIPE would (128 + 13), saying nothing, and
            # point stdout at /dev/null so that the final flush cannot complain.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        print(f"sluice: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return _INTERRUPTED


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (``| head`` finished)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _fd, ev in poller.poll(0))
    except (OSError, ValueError):
        return False
