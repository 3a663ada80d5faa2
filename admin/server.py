"""Serve the admin app with uvicorn inside the daemon's own event loop.

uvicorn's ``Server.serve()`` normally installs SIGINT/SIGTERM handlers with
``signal.signal`` and re-raises them after shutdown; the daemon owns signals
(``loop.add_signal_handler``), so ``capture_signals`` is a no-op here. We bind
the socket ourselves: a bind failure is then an ``OSError`` the daemon
reports, not uvicorn's ``sys.exit``, and port 0 is known before serving.

Connections are bounded (``_BoundedH11``): uvicorn keeps a connection that
never sends a request open for ever, so 400 idle connections held 400 of the
daemon's descriptors and, near its open-file limit, ``/healthz`` got no
answer. A connection that sends nothing is now closed after the
keep-alive timeout, one that has not sent a whole request head within
``REQUEST_WITHIN`` seconds is closed too (nginx's ``client_header_timeout``),
and past ``MAX_CONNECTIONS`` the one idle the longest is closed for each new
one, so a new request (a health check) is always served.
uvicorn's own ``limit_concurrency`` does not do this: it keeps the idle
connections and answers ``503`` to the new request instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from admin.app import create_app
from admin.auth import Credentials
from admin.backend import Backend
from relay.config import AdminSettings, Endpoint
from relay.errors import ConfigError, ListenError

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "REQUEST_WITHIN", "AdminServer", "check_exposure"]

log = logging.getLogger("sluice.admin")

#: open admin connections before the one idle the longest is closed for a new one
MAX_CONNECTIONS = 64
#: seconds a connection may stay silent: before its first request and between requests
IDLE_TIMEOUT = 5
#: seconds from the connection (or the last response) to a request's whole head
REQUEST_WITHIN = 10


def check_exposure(settings: AdminSettings) -> None:
    """Refuse an admin reachable from the network with no password; warn when open.

    Raises:
        ConfigError: ``admin.listen`` is not loopback and no password is configured.
    """
    issue = settings.exposure_issue()
    if issue is not None:
        raise ConfigError([f"admin.listen: {issue}"])
    if settings.has_password or not settings.enabled:
        return
    log.warning(
        "admin page at %s has no password: anyone on this machine can use it "
        "(set admin.password_hash to require a login)",
        settings.listen,
    )


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The daemon owns the signals; uvicorn must neither take nor re-raise them.
        yield


class _BoundedH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with idle connections closed (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.idle_since = self.loop.time()
        self._request_due: asyncio.TimerHandle | None = None
        self._await_request()
        # uvicorn arms its keep-alive timer only after a response: arm it now,
        # so a client that never says anything is closed like an idle keep-alive.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )
        if len(self.connections) > MAX_CONNECTIONS:
            idle = [c for c in self.connections if isinstance(c, _BoundedH11) and c.idle]
            idle.remove(self)
            if idle:
                min(idle, key=lambda c: c.idle_since).transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if not self.idle and self._request_due is not None:
            self._request_due.cancel()  # a whole request came in time
            self._request_due = None

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        self._await_request()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._request_due is not None:
            self._request_due.cancel()
            self._request_due = None
        super().connection_lost(exc)

    def _await_request(self) -> None:
        """Close the connection unless a whole request head arrives within ``REQUEST_WITHIN``.

        The keep-alive timer stops at the first byte, so a client trickling a
        request head (slowloris) would otherwise hold its connection for ever.
        """
        if self._request_due is not None:
            self._request_due.cancel()
        self._request_due = self.loop.call_later(REQUEST_WITHIN, self._request_late)

    def _request_late(self) -> None:
        self._request_due = None
        if self.idle and not self.transport.is_closing():
            self.transport.close()

    @property
    def idle(self) -> bool:
        """No request is being answered (none came yet, only part of one, or the last is done)."""
        return self.cycle is None or self.cycle.response_complete


def _bind(endpoint: Endpoint) -> socket.socket:
    host = "127.0.0.1" if endpoint.host == "localhost" else endpoint.host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, endpoint.port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class AdminServer:
    """uvicorn serving the admin app on one pre-bound socket."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._server = server
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.address = Endpoint(host, port)

    @classmethod
    async def start(cls, backend: Backend, settings: AdminSettings) -> AdminServer:
        """Resolve secrets, build the app over ``backend``, bind ``admin.listen`` (not serving yet).

        Raises:
            ConfigError: a password or token source cannot be read.
            ListenError: the address cannot be bound (in use, not local, no permission).
        """
        try:
            credentials = await asyncio.to_thread(Credentials.from_settings, settings)
        except LookupError as exc:
            raise ConfigError([f"admin: {exc}"]) from None
        app = create_app(backend, settings, credentials)
        # uvicorn's "Started server process" lines describe a process we do not
        # own; keep its warnings and errors only. (Requests are not logged.)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        try:
            sock = _bind(settings.listen)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError("admin.listen", str(settings.listen), reason) from exc
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,  # nothing sits in front of us; trust no X-Forwarded-*
            server_header=False,
            ws="none",
            http=_BoundedH11,
            timeout_keep_alive=IDLE_TIMEOUT,
            timeout_graceful_shutdown=2,
        )
        return cls(_EmbeddedServer(config), sock)

    async def serve(self) -> None:
        """Serve until ``stop()``; run it as a named task in the daemon's TaskGroup."""
        await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._server.should_exit = True
