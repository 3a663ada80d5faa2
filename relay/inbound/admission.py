"""Taking SMTP clients off the listen backlog: only while a session is free.

A burst of 300 clients against ``smtp.max_connections: 100`` used to get
200 × ``421 Too many connections``, and PHP's ``mail()`` (among others)
reports a 421 as a failure. Postfix's ``master`` does not accept while all
its ``smtpd`` processes are busy: the clients wait in the kernel's listen
backlog and are served as sessions end. So does this module.

Each listening socket has its own accept loop (``AcceptServer``), instead of
asyncio's, which accepts whenever the socket is readable, however many
sessions are open. The loop waits until the socket is readable (a client is
in the backlog), then accepts, synchronously and only while the listener's
``Admission`` has room, so no await falls between the check and the count
(several sockets of one listener, or several accept worker processes on one
socket, never take more than their limit). At the limit it stops calling
``accept()``: the kernel completes the handshakes and queues the clients
(the backlog is sized for that, ``listen_backlog``).

A client must not wait for ever: one that has waited ``smtp.connection_wait``
seconds is accepted, answered ``421 4.7.0`` and closed (``0``: at once, the
old behaviour). The kernel does not say when a queued client arrived, so the
loop keeps a lower bound per client: while at the limit it samples the
length of the accept queue every quarter second (Linux reports it in
``TCP_INFO`` of a listening socket; elsewhere only "someone waits" is known,
from readability) and stamps each newly counted client with the time it was
first counted. The queue is first in, first out, so a shorter queue than
counted means the oldest were taken (by a freed session here, or by another
worker). A client is therefore never refused before it has waited the bound,
and at most a quarter second after.

Why no library: asyncio (and uvloop) offer only "accept whatever comes" on
a server; ``loop.add_reader`` on the listening socket and ``socket.accept()``
are the documented pieces both loops support.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import select
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from relay.inbound.descriptors import OUT_OF_DESCRIPTORS, Throttle

__all__ = [
    "SAMPLE_EVERY",
    "AcceptServer",
    "Admission",
    "bind_endpoint",
    "listen_backlog",
    "queued",
]

log = logging.getLogger("sluice.smtp")

#: while at the limit, how often the accept queue is counted (seconds)
SAMPLE_EVERY = 0.25
#: the least listen backlog (the kernel's and asyncio's usual 128)
MIN_BACKLOG = 128
#: after an out-of-descriptors accept, the next try (asyncio's own delay)
_RETRY_AFTER = 1.0
_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
#: ``struct tcp_info``: 8 one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
#: unacked (for a listening socket: the accept queue's length), sacked (its size)
_TCP_INFO_QUEUE = struct.Struct("=8xIIIIII")


def listen_backlog(max_connections: int) -> int:
    """The backlog to listen with: room for a burst twice the sessions, at least 128.

    The kernel silently caps it at ``net.core.somaxconn`` (4096 on current
    Linux, 128 before 5.4); that cap is logged here, since clients beyond the
    backlog are not refused but have their handshake retried by their own
    kernel (a second's delay, then more).
    """
    wanted = max(MIN_BACKLOG, 2 * max_connections)
    try:
        cap = int(_SOMAXCONN.read_text())
    except (OSError, ValueError):
        return wanted
    if cap < wanted:
        log.warning(
            "listen backlog for smtp.max_connections %d would be %d but net.core.somaxconn "
            "is %d: a burst beyond %d waiting clients has its connections retried by the "
            "clients' kernels; raise net.core.somaxconn",
            max_connections,
            wanted,
            cap,
            cap,
        )
        return cap
    return wanted


def queued(sock: socket.socket) -> int:
    """How many clients wait in ``sock``'s accept queue (1 or 0 where it cannot be counted)."""
    if sys.platform == "linux" and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_QUEUE.size)
            if len(info) >= _TCP_INFO_QUEUE.size:
                return int(_TCP_INFO_QUEUE.unpack_from(info)[4])
    readable, _, _ = select.select([sock], [], [], 0)
    return 1 if readable else 0


class Admission:
    """The sessions one listener (in one process) holds, against its limit.

    A session counts from its ``accept()`` until its connection is lost,
    whether it is greeted or refused by the gate.
    """

    def __init__(
        self,
        limit: Callable[[], int],
        wait: Callable[[], float],
        refused: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        #: ``smtp.connection_wait``: how long a client may wait in the backlog
        self.wait = wait
        #: told of each client refused after its wait (``/metrics``)
        self.refused = refused or (lambda: None)
        self.held = 0
        #: the most sessions held at once since start (a test and a bench read it)
        self.peak = 0
        #: refusals after a wait, counted into a log line a minute
        self.refusals = Throttle()
        self._changed: asyncio.Future[None] | None = None

    def room(self) -> bool:
        return self.held < self.limit()

    def take(self) -> None:
        self.held += 1
        self.peak = max(self.peak, self.held)

    def release(self) -> None:
        """A session's connection is gone: wake the accept loops waiting for room."""
        self.held -= 1
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    def changed(self) -> asyncio.Future[None]:
        """Done at the next ``release``."""
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed


#: a refusal after a wait: the session slots stayed full for the whole bound
R_WAITED = (
    "421 4.7.0 Too many connections (limit {limit}, waited {wait:.0f} s); try again later\r\n"
)

#: (an accepted client socket) -> its session started
Serve = Callable[[socket.socket], None]


class AcceptServer:
    """The listening sockets of one address, each with its accept loop.

    What the listener and the daemon use of ``asyncio.Server``: ``sockets``,
    ``is_serving``, ``close`` and ``wait_closed``.
    """

    def __init__(
        self, sockets: list[socket.socket], admission: Admission, serve: Serve, backlog: int
    ) -> None:
        self._socks = sockets
        self._admission = admission
        self._serve = serve
        self._backlog = backlog
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (none once closed, as ``asyncio.Server``'s)."""
        return [] if self._closed else list(self._socks)

    def start_serving(self) -> None:
        """Listen (with the backlog) and accept, each socket in its own task."""
        if self._tasks or self._closed:
            return
        loop = asyncio.get_running_loop()
        for sock in self._socks:
            sock.setblocking(False)
            sock.listen(self._backlog)
            self._tasks.append(loop.create_task(self._accept_loop(sock), name="smtp-accept"))

    def is_serving(self) -> bool:
        """Whether a loop accepts on one of the sockets (one that failed has logged why)."""
        return not self._closed and any(not task.done() for task in self._tasks)

    def close(self) -> None:
        """Stop accepting and close the sockets (each once its loop has ended: at the
        loop's next turn); clients still in the backlog are reset."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if not self._tasks:
            for sock in self._socks:
                sock.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        #: a lower bound of each waiting client's arrival (monotonic), oldest first
        waiting: deque[float] = deque()
        try:
            while True:
                if await self._accept_while_room(loop, sock, waiting):
                    await self._while_full(loop, sock, waiting)
                else:
                    # Out of descriptors: tried again when a session ends, or after a second.
                    await self._ready(loop, sock, readable=False, within=_RETRY_AFTER)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SMTP accept loop on %s failed; not accepting there", sock.getsockname())
        finally:
            # Here, not in ``close``: the loop's reader on it is removed first.
            sock.close()

    async def _accept_while_room(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, waiting: deque[float]
    ) -> bool:
        """Accept from the loop's reader callback until the listener is full (True) or out
        of descriptors (False).

        The reader stays registered meanwhile, and each client is accepted and its
        session started in the callback itself: no task wakes up, no reader is added
        and removed, between a client's arrival and its greeting (asyncio's own
        servers accept the same way).
        """
        if not self._admission.room():
            return True
        stopped: asyncio.Future[bool] = loop.create_future()

        def readable() -> None:
            if stopped.done():
                return
            try:
                full = self._accept_ready(loop, sock, waiting)
            except Exception as exc:
                stopped.set_exception(exc)
                return
            if full is not None:
                stopped.set_result(full)

        fd = sock.fileno()
        loop.add_reader(fd, readable)
        try:
            return await stopped
        finally:
            loop.remove_reader(fd)

    def _accept_ready(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, waiting: deque[float]
    ) -> bool | None:
        """Accept the clients in the backlog while there is room (synchronously, so no
        await falls between the check and the count): None once the backlog is empty,
        True at the limit, False out of descriptors."""
        admission = self._admission
        while admission.room():
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return None  # nobody (left) in the backlog, or another worker took them
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_DESCRIPTORS:
                    raise
                # Reported to the loop's handler (``quiet_emfile`` throttles it).
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": exc}
                )
                return False
            if waiting:
                waiting.popleft()
            admission.take()
            try:
                self._serve(conn)
            except Exception:
                admission.release()
                conn.close()
                raise
        return True

    async def _while_full(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, waiting: deque[float]
    ) -> None:
        """At the limit: wait for a free session; refuse whoever waited past the bound."""
        admission = self._admission
        while not admission.room():
            now = time.monotonic()
            count = queued(sock)
            while len(waiting) > count:
                waiting.popleft()  # taken from the front, by someone else
            waiting.extend([now] * (count - len(waiting)))
            bound = admission.wait()
            if waiting and now - waiting[0] >= bound:
                try:
                    conn, peer = sock.accept()
                except OSError:  # taken by another worker (or out of descriptors):
                    # the next count says which are left
                    await self._ready(loop, sock, readable=False, within=SAMPLE_EVERY)
                    continue
                self._refuse(conn, peer, now - waiting.popleft())
                continue
            if waiting:
                due = waiting[0] + bound - now
                await self._ready(loop, sock, readable=False, within=min(SAMPLE_EVERY, due))
            else:
                await self._ready(loop, sock, readable=True, within=None)

    def _refuse(self, conn: socket.socket, peer: object, waited: float) -> None:
        limit = self._admission.limit()
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(R_WAITED.format(limit=limit, wait=waited).encode("ascii"))
        conn.close()
        self._admission.refused()
        suppressed = self._admission.refusals.take()
        if suppressed is not None:
            ip = peer[0] if isinstance(peer, tuple) and peer else peer
            log.warning(
                "refused connection from %s after %.1f s in the backlog: "
                "smtp.max_connections (%d) stayed reached%s",
                ip,
                waited,
                limit,
                f" ({suppressed} more since the last message)" if suppressed else "",
            )

    async def _ready(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        readable: bool,
        within: float | None,
    ) -> None:
        """Until a session ends, ``within`` seconds pass, or (``readable``) a client waits."""
        waits: list[asyncio.Future[None]] = [self._admission.changed()]
        fd = sock.fileno()
        if readable:
            ready = loop.create_future()
            waits.append(ready)

            def wake() -> None:
                if not ready.done():
                    ready.set_result(None)

            loop.add_reader(fd, wake)
        try:
            await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if readable:
                loop.remove_reader(fd)


async def bind_endpoint(host: str, port: int) -> list[socket.socket]:
    """Bind (not listen on) every address ``host`` names, as ``loop.create_server`` would.

    Raises:
        OSError: an address could not be bound (the others are closed).
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None,
        port,
        family=socket.AF_UNSPEC,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"error while attempting to bind on address {address!r}: "
                    f"{(exc.strerror or '').lower()}",
                ) from None
            sock.setblocking(False)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    if not bound:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host!r}")
    return bound
