"""Accept worker processes: SMTP in on one core, delivery on another.

One Python process runs on one core, and on a busy host its event loop is
the limit: reading and checking bodies (accept) and preparing and sending
them (delivery) take about half of it each. With ``smtp.workers: N`` the
daemon binds the listening sockets itself (so reloads, port 0 and the
``listening smtp=`` line are unchanged) but does not accept on them; N child
processes (``python -m relay.inbound.workers``) do, as Postfix's ``smtpd``
processes do for its queue manager. Each one:

* serves the daemon's sockets, inherited by file descriptor;
* writes accepted mail into the same spool with its own connection and
  writer thread (WAL allows one writer at a time across processes; each
  commit is short), and answers ``250`` only after that commit, as in-process;
* reports each accepted or refused message on its channel to the daemon (a
  socketpair), which counts it in ``/metrics`` and wakes the scheduler;
* asks the daemon, over the same channel, whether a message fits its
  ``smtp.policies`` rate, and whether an address is locked out of AUTH (and
  tells it each failed AUTH): the daemon counts for all workers, so a client
  spread over several gets the configured rate and ``smtp.auth_failure_limit``,
  not N times them.

The daemon sends settings on reload and ``stop`` on shutdown; a worker whose
channel closes (the daemon died: the kernel closes its end of the socketpair
however it ends, ``kill -9`` included) stops accepting at once, answers
``421 4.3.2`` to its open sessions and exits. A worker that dies is replaced.
Nothing is lost when one dies mid-message: a client gets ``250`` only once
the message is committed.

Frames on the channel, both ways: a 4-byte big-endian length and a pickle.
Both ends are this program, parent and child, over a private socketpair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay import logsetup
from relay.address_rules import AddressRules
from relay.backoff import exponential
from relay.config import (
    Endpoint,
    LogSettings,
    Rate,
    SmtpSettings,
    SpoolSettings,
    SuppressionSettings,
)
from relay.inbound.auth import FailureCounter
from relay.inbound.listener import AcceptEvents, RelayHandler, start_listeners
from relay.inbound.policy import WindowCounter
from relay.runner import run_fast, settle_heap
from relay.store.spool import Spool

__all__ = ["AcceptorPool", "WorkerSettings", "main"]

log = logging.getLogger("sluice.acceptor")

_LENGTH = struct.Struct(">I")
_READY_WITHIN = 30.0
_RESPAWN_DELAY = 1.0
_RESPAWN_MAX_DELAY = 60.0
#: how long a worker waits for the daemon's answer to a rate question before refusing (451),
#: or to an AUTH failure question (454)
_RATE_ANSWER_WITHIN = 10.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What an accept worker needs of the config (no provider secrets)."""

    smtp: SmtpSettings
    log: LogSettings
    #: where the store is (a SQLite file, or PostgreSQL: the worker reads the password itself)
    spool: SpoolSettings
    hostname: str
    #: the daemon logs through ``logsetup.configure`` (else: plain lines, as in the demo)
    sluice_logs: bool = True
    #: ``suppression.stream_headers``: what names the stream the spool stores
    stream_headers: list[str] = field(default_factory=lambda: SuppressionSettings().stream_headers)
    #: aliases, redirect and archive_bcc, applied as the daemon's own listener does
    rules: AddressRules = field(default_factory=AddressRules)


def _send(writer: asyncio.StreamWriter, message: object) -> None:
    if writer.is_closing():
        return
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(body)) + body)


async def _recv(reader: asyncio.StreamReader) -> Any:
    """The next frame, or ``None`` at end of stream."""
    try:
        (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
        return pickle.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


# ------------------------------------------------------------------ daemon side


@dataclass
class _Worker:
    slot: int
    process: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    #: being replaced or stopped: its exit is expected
    retired: bool = False
    #: it said it serves the sockets (a worker that never did is not replaced
    #: by its own exit: whoever started it retries)
    started: bool = False
    told_to_stop: bool = False
    events: asyncio.Task[None] | None = None


class AcceptorPool:
    """The daemon's accept workers: start, reconfigure, replace and stop them."""

    def __init__(
        self,
        count: int,
        *,
        settings: Callable[[], WorkerSettings],
        sockets: Callable[[], Sequence[tuple[Endpoint, socket.socket]]],
        events: AcceptEvents,
        wake: Callable[[], None],
        rates: WindowCounter | None = None,
        auth_failures: FailureCounter | None = None,
    ) -> None:
        self._count = count
        #: ``smtp.policies`` rates, counted here for every worker (they ask over their channel)
        self._rates = WindowCounter() if rates is None else rates
        #: failed AUTHs per client address, counted here for every worker
        self._auth_failures = FailureCounter() if auth_failures is None else auth_failures
        self._settings = settings
        self._sockets = sockets
        self._events = events
        self._wake = wake
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._respawns: dict[int, asyncio.Task[None]] = {}
        #: how a worker is started; its channel's descriptor is appended
        self.command: Sequence[str] = (sys.executable, "-m", "relay.inbound.workers")

    @property
    def configured(self) -> int:
        """How many workers should be serving (``smtp.workers``)."""
        return self._count

    @property
    def alive(self) -> int:
        """How many workers are serving the sockets (started, and not exited)."""
        return sum(1 for w in self._workers.values() if w.started and w.process.returncode is None)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers.values()]

    async def start(self) -> None:
        """Start every worker and wait until each one serves the sockets.

        Raises:
            OSError: a worker could not be started or exited before it was ready.
        """
        for slot in range(self._count):
            await self._spawn(slot)

    async def _spawn(self, slot: int) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        bound = list(self._sockets())
        fds = [s.fileno() for _, s in bound]
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                str(child.fileno()),
                pass_fds=[child.fileno(), *fds],
                stdin=asyncio.subprocess.DEVNULL,
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        _send(
            writer, (self._settings(), [(ep, fd) for (ep, _), fd in zip(bound, fds, strict=True)])
        )
        ready: asyncio.Future[None] = loop.create_future()
        worker = _Worker(slot, process, writer)
        worker.events = loop.create_task(
            self._read_events(worker, reader, ready), name=f"acceptor-{slot}"
        )
        self._workers[slot] = worker
        try:
            async with asyncio.timeout(_READY_WITHIN):
                await ready
        except TimeoutError:
            ready.cancel()
            process.kill()
            raise OSError(f"accept worker {process.pid} did not start") from None
        worker.started = True
        log.info("accept worker %d started (pid %d)", slot, process.pid)

    async def _read_events(
        self, worker: _Worker, reader: asyncio.StreamReader, ready: asyncio.Future[None]
    ) -> None:
        # Read until the worker exits, even once retired: what it accepts
        # while its last sessions finish must still wake the scheduler.
        while (frame := await _recv(reader)) is not None:
            kind, value = frame
            if kind == "accept":
                self._events.on_accept(value)
                self._wake()
            elif kind == "reject":
                self._events.on_reject(value)
            elif kind == "rate":
                ident, key, rate = value
                _send(worker.writer, ("rate", (ident, self._rates.take(key, rate))))
            elif kind == "auth_failures":
                ident, ip, limit, lockout, failed = value
                counter = self._auth_failures
                wait = (counter.record if failed else counter.locked_for)(ip, limit, lockout)
                _send(worker.writer, ("auth_failures", (ident, wait)))
            elif kind == "auth":
                self._events.on_auth(value)
            elif kind == "ready" and not ready.done():
                ready.set_result(None)
        if not ready.done():
            ready.set_exception(OSError("accept worker exited during start-up (its log is above)"))
        code = await worker.process.wait()
        if worker.started and not (self._stopping or worker.retired):
            log.error(
                "accept worker %d (pid %d) exited with status %s; starting another",
                worker.slot,
                worker.process.pid,
                code,
            )
            self._respawn_later(worker.slot)

    def _respawn_later(self, slot: int) -> None:
        if slot not in self._respawns and not self._stopping:
            task = asyncio.get_running_loop().create_task(self._respawn(slot))
            self._respawns[slot] = task
            task.add_done_callback(lambda _: self._respawns.pop(slot, None))

    async def _respawn(self, slot: int) -> None:
        """Start a worker for ``slot`` again, retrying until one starts or the pool stops.

        The wait doubles after each failure, from 1 s up to 60 s (Postfix's
        master throttles a failing service the same way), so a worker that
        cannot start does not spin, and one that can again is back within a
        minute; meanwhile ``alive`` (so ``/healthz``) tells nobody accepts.
        """
        failures = 0
        delay = _RESPAWN_DELAY
        while not self._stopping:
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(slot)
                return
            except OSError as exc:
                failures += 1
                delay = exponential(failures + 1, first=_RESPAWN_DELAY, cap=_RESPAWN_MAX_DELAY)
                log.error(
                    "could not start accept worker %d: %s; trying again in %.0f s",
                    slot,
                    exc,
                    delay,
                )

    def reconfigure(self) -> None:
        """Send the current settings to every worker (a reload).

        Each worker applies them when it next reads its channel, as Postfix's
        processes take a ``postfix reload``: a session that starts in that
        moment may still run under the old settings.
        """
        settings = self._settings()
        for worker in self._workers.values():
            _send(worker.writer, ("settings", settings))

    async def restart(self, grace: float) -> None:
        """Replace every worker, e.g. to serve a new set of sockets: new first, then old.

        A replacement that cannot start is retried in the background; the old
        worker stops all the same, since its sockets are no longer wanted.
        """
        old = list(self._workers.values())
        for worker in old:
            worker.retired = True
            try:
                await self._spawn(worker.slot)
            except OSError as exc:
                log.error(
                    "could not start accept worker %d on the new sockets: %s; trying again",
                    worker.slot,
                    exc,
                )
                self._respawn_later(worker.slot)
        await asyncio.gather(*(self._stop_one(w, grace) for w in old))

    def stop_accepting(self, grace: float) -> None:
        """Tell every worker to stop: no new sessions; open ones get ``grace`` seconds."""
        self._stopping = True
        for task in list(self._respawns.values()):
            task.cancel()
        for worker in self._workers.values():
            self._tell_stop(worker, grace)

    async def aclose(self, grace: float) -> None:
        """Stop every worker and wait for it (sessions get ``grace`` seconds, then ``421``)."""
        self.stop_accepting(grace)
        await asyncio.gather(*(self._stop_one(w, grace) for w in self._workers.values()))

    @staticmethod
    def _tell_stop(worker: _Worker, grace: float) -> None:
        worker.retired = True
        if not worker.told_to_stop:
            worker.told_to_stop = True
            _send(worker.writer, ("stop", grace))

    async def _stop_one(self, worker: _Worker, grace: float) -> None:
        self._tell_stop(worker, grace)
        try:
            async with asyncio.timeout(grace + 10):
                await worker.process.wait()
        except TimeoutError:
            log.error("accept worker pid %d did not stop; killing it", worker.process.pid)
            worker.process.kill()
            await worker.process.wait()
        if worker.events is not None:
            await worker.events  # its last events, then end of stream
        worker.writer.close()


# ------------------------------------------------------------------ worker side


class _ChannelEvents:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def on_accept(self, size: int) -> None:
        _send(self._writer, ("accept", size))

    def on_reject(self, reason: str) -> None:
        _send(self._writer, ("reject", reason))

    def on_auth(self, result: str) -> None:
        _send(self._writer, ("auth", result))


class _ChannelQuestions:
    """Questions to the daemon, which counts for every worker at once: rates and AUTH failures.

    One question and answer per MAIL under a policy with a rate, and per
    AUTH (two when it fails): a local socketpair round trip; MAIL is
    answered no slower than a MAIL+RSET's ordinary noise on a loaded 2-core
    host. The answer is matched to its question by a number, since sessions
    ask concurrently. No answer within 10 s (a daemon stuck or gone) raises
    ``TimeoutError``: the MAIL is answered ``451 4.3.0``, the AUTH ``454 4.7.0``.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._asked = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}

    async def _ask(self, kind: str, question: tuple[Any, ...]) -> Any:
        self._asked += 1
        ident = self._asked
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = answer
        try:
            _send(self._writer, (kind, (ident, *question)))
            async with asyncio.timeout(_RATE_ANSWER_WITHIN):
                return await answer
        finally:
            self._pending.pop(ident, None)

    async def take(self, key: str, rate: Rate) -> bool:
        """``RateGate``: whether one more message fits ``rate`` for ``key``."""
        return bool(await self._ask("rate", (key, rate)))

    async def failures(self, ip: str, limit: int, lockout: float, *, failed: bool) -> float:
        """``FailureGate``: seconds ``ip`` is locked out of AUTH, counting a failure first."""
        return float(await self._ask("auth_failures", (ip, limit, lockout, failed)))

    def answered(self, ident: int, value: object) -> None:
        answer = self._pending.get(ident)
        if answer is not None and not answer.done():
            answer.set_result(value)


def _configure_logs(settings: WorkerSettings) -> None:
    if settings.sluice_logs:
        logsetup.configure(settings.log.level, settings.log.format)
    else:
        logsetup.configure_plain(settings.log.level)


async def _serve(channel_fd: int) -> int:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=channel_fd))
    init = await _recv(reader)
    if init is None:
        return 1
    settings: WorkerSettings
    settings, fds = init
    _configure_logs(settings)
    stop = asyncio.Event()
    grace = 5.0  # until the daemon says otherwise
    # The daemon decides when to stop: Ctrl-C in a terminal reaches the whole
    # process group, and a reload is the daemon's to forward.
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    spool = await Spool.open(settings.spool)
    spool.stream_headers = settings.stream_headers
    questions = _ChannelQuestions(writer)
    try:
        handler = RelayHandler(
            spool,
            lambda: settings.smtp,
            hostname=settings.hostname,
            events=_ChannelEvents(writer),
            rules=lambda: settings.rules,
            rates=questions,
        )
        listener = await start_listeners(
            lambda: settings.smtp,
            handler,
            hostname=settings.hostname,
            sockets=[(ep, socket.socket(fileno=fd)) for ep, fd in fds],
            auth_failures=questions,
        )
        settle_heap()
        _send(writer, ("ready", os.getpid()))

        async def commands() -> None:
            nonlocal settings, grace
            while (frame := await _recv(reader)) is not None:
                kind, value = frame
                if kind == "settings":
                    settings = value
                    _configure_logs(settings)
                    spool.stream_headers = settings.stream_headers
                elif kind in ("rate", "auth_failures"):
                    questions.answered(*value)
                elif kind == "stop":
                    grace = value
                    break
            else:
                # The daemon is gone (killed: a stop would have said so). Nobody
                # delivers or counts what this worker takes, and its sockets
                # keep a restarted daemon's port busy: 421 every session now
                # (a message being stored still gets its answer) and exit.
                grace = 0.0
                log.warning(
                    "the daemon is gone (its channel closed): ending %d open SMTP "
                    "session(s) with 421 and exiting",
                    len(listener.sessions.open),
                )
            stop.set()

        task = loop.create_task(commands())
        await stop.wait()
        task.cancel()
        await listener.aclose(grace=grace)
    finally:
        await spool.aclose()
        writer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or not args[0].isdigit():
        print(
            "usage: python -m relay.inbound.workers CHANNEL_FD (started by sluice serve)",
            file=sys.stderr,
        )
        return os.EX_USAGE
    with contextlib.suppress(KeyboardInterrupt):
        return run_fast(_serve(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
