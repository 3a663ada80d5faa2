"""The ASGI middleware every admin request passes: Host, Origin, login, CSRF, headers.

It runs inside Starlette's ``SessionMiddleware`` (see ``admin.app``), which
signs and reads the session cookie; what the session holds and when it is
void is ``admin.auth.Sessions``'. In order:

1. ``Host`` must be a loopback name, the listen address or one of
   ``admin.allowed_hosts``: a DNS-rebinding page reaches us with its own
   host name and is refused with 421 Misdirected Request.
2. A state-changing request whose ``Origin`` (or ``Sec-Fetch-Site``) shows it
   comes from another site is refused before anything else looks at it.
3. The caller is identified (see ``admin.auth``); failed bearer, Basic and
   form logins are counted by ``LoginLimiter`` and answered 429 while a
   key's delay runs. A page redirects to the login form, the API and
   ``/metrics`` answer 401.
4. A state-changing request authenticated by the cookie must carry the
   session's CSRF token, in the ``X-CSRF-Token`` header or, for plain HTML
   forms, the ``csrf_token`` field (the body is read here, bounded, and
   replayed to the route; a file upload, ``multipart/form-data``, is read
   up to ``_UPLOAD_MAX`` and parsed with Starlette's own multipart parser).
5. Every response gets CSP, frame, sniffing and referrer headers.

Why these stay hand-written (issue #14, item 10: use what exists):

* Host: Starlette's ``TrustedHostMiddleware`` answers 400 and offers a
  ``www.`` redirect; we answer 421 (RFC 9110 §15.5.20: the request reached a
  server not configured for that host), which the security tests pin, and
  the allowed set is computed from the listen address. Ten lines.
* CSRF: ``starlette-csrf`` and ``asgi-csrf`` (both on PyPI) implement the
  double-submit-cookie pattern with a token cookie of their own that is not
  bound to the session. We keep a synchronizer token *inside* the session:
  it changes at login (a token seen before login is worth nothing after,
  which the tests pin), dies with the session at logout or revocation, and
  Bearer/Basic calls, which carry no ambient credential, are exempt by
  construction. ``starlette-csrf`` also reads no form field, and our forms
  work without JavaScript. The form-body read and replay is ~30 lines.
* Origin / ``Sec-Fetch-Site`` and the security headers: no maintained ASGI
  middleware does these checks as one small unit; they are a few lines.
* Sessions: Starlette's ``SessionMiddleware`` (replacing the hand-written
  itsdangerous codec), with the server-side session version on top.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from admin.auth import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    Credentials,
    LoginLimiter,
    Session,
    Sessions,
)
from relay.errors import SpoolError

__all__ = ["SCOPE_KEY", "Guard", "Identity", "Via", "allowed_host_names"]

SCOPE_KEY = "sluice.identity"

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PUBLIC = ("/login", "/static/", "/healthz")
_MACHINE = ("/api/", "/metrics")

log = logging.getLogger("sluice.admin")
_FORM_MAX = 64 * 1024
#: the largest file upload a browser may post (the CSV import's limit, and room for the form)
_UPLOAD_MAX = 4 * 1024 * 1024 + _FORM_MAX

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class Via(StrEnum):
    """How a request's caller proved who they are."""

    TOKEN = "token"  #: the API bearer token
    BASIC = "basic"  #: HTTP Basic user name and password
    COOKIE = "cookie"  #: the session cookie of a login
    OPEN = "open"  #: nothing to prove: no password is configured
    NONE = "none"  #: not proved: only the public pages


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request and how they proved it."""

    via: Via
    user: str | None
    #: the cookie session (or a new anonymous one) when the caller is a browser
    session: Session | None

    @property
    def authenticated(self) -> bool:
        return self.via is not Via.NONE


def allowed_host_names(listen_host: str, extra: Iterable[str]) -> frozenset[str]:
    """Host header values (without port) the admin answers to."""
    names = {"localhost", "127.0.0.1", "::1", "[::1]", listen_host.lower()}
    names.update(h.lower().strip() for h in extra)
    if ":" in listen_host:
        names.add(f"[{listen_host.lower()}]")
    return frozenset(n for n in names if n and n not in ("0.0.0.0", "::", "[::]"))


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer every response)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: Credentials,
        sessions: Sessions,
        limiter: LoginLimiter,
        hosts: frozenset[str],
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.sessions = sessions
        self.limiter = limiter
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        method: str = scope["method"]

        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = list(_SECURITY_HEADERS)
                if not path.startswith("/static/"):
                    extra.append((b"cache-control", b"no-store"))
                message = {**message, "headers": [*message["headers"], *extra]}
            await send(message)

        if _host_name(headers.get("host", "")) not in self.hosts:
            await _plain(send_secured, 421, "unknown Host header (see admin.allowed_hosts)")
            return
        if method in _UNSAFE and not self._same_site(headers):
            await _plain(send_secured, 403, "cross-site request refused")
            return

        if "session" not in scope:
            raise RuntimeError("admin.guard.Guard must run inside SessionMiddleware")
        try:
            store: dict[str, Any] = scope["session"]
            cookie_session = await self.sessions.read(store)
            identity, problem = await self._identify(scope, headers, cookie_session)
            if identity.session is not None and cookie_session is None:
                # A browser without a (still valid) session gets a fresh anonymous one,
                # so that its forms carry a token; SessionMiddleware sets the cookie.
                identity = Identity(identity.via, identity.user, Sessions.start_anonymous(store))
            if problem is not None:
                status, text, extra_headers = problem
                await _plain(send_secured, status, text, extra_headers)
                return
            scope[SCOPE_KEY] = identity

            if not identity.authenticated and not path.startswith(_PUBLIC):
                if path.startswith(_MACHINE):
                    await _json(send_secured, 401, {"error": "authentication required"})
                else:
                    query = scope.get("query_string", b"").decode("latin-1")
                    target = quote(path + ("?" + query if query else ""), safe="")
                    await _redirect(send_secured, f"/login?next={target}")
                return

            # Cookie-borne credentials (a login, or the anonymous session of an open
            # admin) are what a forged cross-site form would ride on: demand the token.
            # An open admin called without any cookie is a script; Origin was checked.
            # A stale, revoked or forged cookie still marks a browser: no exemption.
            cookie_borne = identity.via is Via.COOKIE or (
                identity.via in (Via.OPEN, Via.NONE) and COOKIE in headers.get("cookie", "")
            )
            if method in _UNSAFE and (cookie_borne or path == "/login"):
                if cookie_session is None:
                    await _plain(send_secured, 403, "session expired or missing: reload the page")
                    return
                ok, receive = await self._check_csrf(cookie_session, scope, headers, receive)
                if ok is None:
                    await _plain(send_secured, 413, "upload too large")
                    return
                if not ok:
                    await _plain(send_secured, 403, "CSRF token missing or wrong; reload the page")
                    return
            await self.app(scope, receive, send_secured)
        except SpoolError as exc:
            # The store cannot be read (a PostgreSQL outage): the session check
            # or the page failed. One line saying so, not a 500 and a traceback;
            # a response already under way cannot be replaced.
            if started:
                raise
            text = f"the spool is unavailable ({exc}); try again shortly"
            log.warning("admin %s %s: %s", method, path, text)
            if path.startswith(_MACHINE):
                await _json(send_secured, 503, {"error": text})
            else:
                await _plain(send_secured, 503, text)

    def _same_site(self, headers: dict[str, str]) -> bool:
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser (curl, scripts); browsers send Origin on POST
        if origin == "null":
            return False
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    def _throttled(self, keys: tuple[str, ...]) -> tuple[int, str, list[tuple[str, str]]] | None:
        wait = self.limiter.retry_after(keys)
        if not wait:
            return None
        return 429, "too many failed logins; try later", [("retry-after", str(int(wait) + 1))]

    async def _identify(
        self, scope: Scope, headers: dict[str, str], session: Session | None
    ) -> tuple[Identity, tuple[int, str, list[tuple[str, str]]] | None]:
        creds = self.credentials
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        scheme = scheme.lower()
        client = (scope.get("client") or ("?", 0))[0]
        nobody = Identity(Via.NONE, None, None)
        if scheme == "bearer":
            keys = self.limiter.keys(client, None)
            if (throttled := self._throttled(keys)) is not None:
                return nobody, throttled
            if creds.check_token(value.strip()):
                self.limiter.succeeded(keys)
                return Identity(Via.TOKEN, creds.username, None), None
            self.limiter.failed(keys)
            return nobody, (401, "bad token", [])
        if scheme == "basic" and creds.login_required:
            pair = creds.basic(value.strip())
            keys = self.limiter.keys(client, pair[0] if pair else "")
            if (throttled := self._throttled(keys)) is not None:
                return nobody, throttled
            if pair is not None and await creds.check(*pair):
                self.limiter.succeeded(keys)
                return Identity(Via.BASIC, pair[0], None), None
            self.limiter.failed(keys)
            return nobody, (
                401,
                "bad user name or password",
                [("www-authenticate", 'Basic realm="Sluice admin"')],
            )
        if not creds.login_required:
            return Identity(Via.OPEN, None, session or Session.anonymous()), None
        if session is not None and session.user is not None:
            return Identity(Via.COOKIE, session.user, session), None
        return Identity(Via.NONE, None, session or Session.anonymous()), None

    async def _check_csrf(
        self, session: Session, scope: Scope, headers: dict[str, str], receive: Receive
    ) -> tuple[bool | None, Receive]:
        """Whether the token is right (None: an upload over the limit), and the body to replay."""
        if session.csrf_ok(headers.get(CSRF_HEADER)):
            return True, receive
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return False, receive
        multipart = ctype == "multipart/form-data"
        limit = _UPLOAD_MAX if multipart else _FORM_MAX
        body = bytearray()
        more = True
        while more:  # bounded: at most ``limit`` bytes are kept
            message = await receive()
            if message["type"] == "http.disconnect":
                return False, receive
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return (None if multipart else False), receive
        token = await _multipart_token(scope, bytes(body)) if multipart else None
        if not multipart:
            fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
            tokens = fields.get(CSRF_FIELD)
            token = tokens[0] if tokens else None
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return session.csrf_ok(token), replay


async def _multipart_token(scope: Scope, body: bytes) -> str | None:
    """The ``csrf_token`` field of a ``multipart/form-data`` body (None: absent or malformed)."""

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(Headers(scope=scope), stream(), max_files=1, max_fields=20)
    try:
        form = await parser.parse()
    except MultiPartException:
        return None
    try:
        token = form.get(CSRF_FIELD)
        return token if isinstance(token, str) else None
    finally:
        await form.close()


async def _plain(
    send: Send, status: int, text: str, headers: list[tuple[str, str]] | None = None
) -> None:
    raw = [(b"content-type", b"text/plain; charset=utf-8")]
    raw += [(k.encode(), v.encode()) for k, v in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": text.encode() + b"\n"})


async def _json(send: Send, status: int, payload: Any) -> None:
    raw = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", b'Basic realm="Sluice admin"'),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


async def _redirect(send: Send, location: str) -> None:
    headers = [(b"location", location.encode()), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b"login required\n"})
