"""Serve the admin app with uvicorn inside the daemon's own event loop.

uvicorn's ``Server.serve()`` normally installs SIGINT/SIGTERM handlers with
``signal.signal`` and re-raises them after shutdown; the daemon owns signals
(``loop.add_signal_handler``), so ``capture_signals`` is a no-op here. We bind
the socket ourselves: a bind failure is then an ``OSError`` the daemon
reports, not uvicorn's ``sys.exit``, and port 0 is known before serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator

import uvicorn

from admin.app import create_app
from admin.auth import Credentials
from admin.backend import Backend
from relay.config import AdminSettings, Endpoint
from relay.errors import ConfigError, ListenError

__all__ = ["AdminServer", "check_exposure"]

log = logging.getLogger("sluice.admin")


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
            timeout_graceful_shutdown=2,
        )
        return cls(_EmbeddedServer(config), sock)

    async def serve(self) -> None:
        """Serve until ``stop()``; run it as a named task in the daemon's TaskGroup."""
        await self._server.serve(sockets=[self._sock])

    def stop(self) -> None:
        self._server.should_exit = True
