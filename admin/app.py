"""The admin web app: ``create_app(backend, settings, credentials)`` builds one Starlette app.

No globals: everything the routes need (spool, snapshot, metrics, reload,
connection test, secrets) comes in through ``Backend`` and lives on
``app.state.admin`` for this one app. Templates autoescape everything; pages
and JSON API share the values in ``admin.data``.
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from admin import api, controls, dkim, pages, settings_api
from admin import settings as settings_pages
from admin.auth import COOKIE, Credentials, LoginLimiter, Sessions
from admin.backend import AdminState, Backend
from admin.guard import Guard, allowed_host_names
from relay.config import AdminSettings
from relay.logsetup import mask_url
from relay.wording import plural, when

__all__ = ["create_app"]

_HERE = Path(__file__).parent


def _iso(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every template, whatever its name: message data is hostile
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = partial(when, empty="–")
    env.filters["iso"] = _iso
    env.filters["masked_url"] = mask_url  # a webhook URL's query may hold its token
    env.globals["plural"] = plural
    return Jinja2Templates(env=env)


class _SessionMiddleware(SessionMiddleware):
    """Starlette's, with the cookie attributes spelt as RFC 6265 §4.1.1 writes them.

    Attribute names are case-insensitive (§5.2), so this changes no browser's
    behaviour; it keeps ``HttpOnly; SameSite=Strict`` greppable for operators
    and tests alike.
    """

    def __init__(self, app: ASGIApp, *, secret_key: str, max_age: int) -> None:
        super().__init__(
            app, secret_key, session_cookie=COOKIE, max_age=max_age, same_site="strict"
        )
        self.security_flags = "HttpOnly; SameSite=Strict"


def create_app(
    backend: Backend,
    settings: AdminSettings,
    credentials: Credentials,
    *,
    listen_host: str | None = None,
    limiter: LoginLimiter | None = None,
) -> Starlette:
    """The admin ASGI app for one daemon.

    Args:
        backend: what the app reads and acts on.
        settings: the ``admin`` config section (allowed hosts, session age).
        credentials: resolved secrets (``Credentials.from_settings``).
        listen_host: the address the server binds, added to the allowed Host names.
        limiter: the login brake (tests pass one with their own clock).
    """
    # Trusted-device cookies of the login brake last a month (or until restart).
    sessions = Sessions(
        credentials,
        backend.spool,
        device_max_age=30 * 86400,
        secret_key=backend.session_key,
    )
    limiter = limiter if limiter is not None else LoginLimiter()
    hosts = allowed_host_names(listen_host or settings.listen.host, settings.allowed_hosts)
    app = Starlette(
        routes=[
            # First: /providers/new before /providers/{pid}.
            *settings_pages.routes,
            *settings_api.routes,
            *controls.routes,
            *pages.routes,
            *api.routes,
            *dkim.routes,
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        # Outermost first: the session is read before the guard looks at it.
        middleware=[
            Middleware(
                _SessionMiddleware,
                secret_key=sessions.secret_key,
                max_age=int(settings.session_max_age),
            ),
            Middleware(
                Guard, credentials=credentials, sessions=sessions, limiter=limiter, hosts=hosts
            ),
        ],
    )
    app.state.admin = AdminState(
        backend=backend,
        settings=settings,
        credentials=credentials,
        sessions=sessions,
        limiter=limiter,
        templates=_templates(),
    )
    return app
