"""Who may use the admin page, and how a request proves it.

Three ways in, checked in this order:

* a bearer token (``admin.api_token_env`` / ``api_token_file``), for scripts;
* HTTP Basic with the admin user name and password, for scripts and scrapers;
* the session cookie set by the login form, for browsers.

With no password configured the admin is open (the daemon only allows that on
a loopback address), and every visitor still gets a session cookie so that
forms carry a CSRF token.

The session cookie is signed with itsdangerous under a key made at start-up:
restarting Sluice logs everyone out, and no key is ever stored. It holds the
user name and a synchronizer CSRF token; a form or API call authenticated by
the cookie must echo that token (form field ``csrf_token`` or header
``X-CSRF-Token``). Bearer and Basic calls carry no ambient credential a
foreign page could ride on, so they are exempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from relay.config import AdminSettings

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Credentials",
    "LoginLimiter",
    "Session",
    "SessionCodec",
    "hash_password",
]

COOKIE = "sluice_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

# Remember this many successful Basic-auth checks, so that a script polling the
# API does not pay for an argon2 verification on every call.
_VERIFIED_CACHE = 32


def hash_password(password: str) -> str:
    """An argon2id hash to paste into ``admin.password_hash``."""
    return PasswordHasher().hash(password)


@dataclass
class Credentials:
    """The configured admin secrets, resolved once at start-up."""

    username: str
    password_hash: str | None = None
    password: str | None = None
    api_token: str | None = None
    _verified: deque[bytes] = field(default_factory=lambda: deque(maxlen=_VERIFIED_CACHE))

    @classmethod
    def from_settings(cls, settings: AdminSettings) -> Credentials:
        """Resolve the admin password and the API token (reads files: call in a thread).

        Raises:
            SecretError: a named variable or file is missing, or the value is
                empty (a ``LookupError``): an empty password must never open the admin.
        """
        password = settings.password.resolve() if settings.password is not None else None
        token = settings.api_token.resolve() if settings.api_token is not None else None
        return cls(
            username=settings.username,
            password_hash=(
                settings.password_hash.get_secret_value() if settings.password_hash else None
            ),
            password=password.get_secret_value() if password else None,
            api_token=token.get_secret_value() if token else None,
        )

    @property
    def login_required(self) -> bool:
        return bool(self.password_hash or self.password)

    def check_token(self, token: str) -> bool:
        return self.api_token is not None and hmac.compare_digest(
            token.encode(), self.api_token.encode()
        )

    async def check(self, username: str, password: str) -> bool:
        """Constant-time user name and password check (argon2 runs in a thread)."""
        user_ok = hmac.compare_digest(username.encode(), self.username.encode())
        if self.password is not None:
            pw_ok = hmac.compare_digest(password.encode(), self.password.encode())
            return user_ok and pw_ok
        if self.password_hash is None:
            return False
        digest = hashlib.sha256(f"{username}\0{password}".encode()).digest()
        if any(hmac.compare_digest(digest, seen) for seen in self._verified):
            return True
        ok = await asyncio.to_thread(_argon2_verify, self.password_hash, password)
        if ok and user_ok:
            self._verified.append(digest)
        return ok and user_ok

    def basic(self, header: str) -> tuple[str, str] | None:
        """Split an ``Authorization: Basic ...`` value into user name and password."""
        try:
            raw = base64.b64decode(header, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = raw.partition(":")
        return (user, password) if sep else None


def _argon2_verify(password_hash: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Session:
    """What the signed cookie holds."""

    csrf: str
    user: str | None = None

    @classmethod
    def anonymous(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(24))

    def logged_in(self, user: str) -> Session:
        # A fresh token at login: a token seen before login is worth nothing after.
        return Session(csrf=secrets.token_urlsafe(24), user=user)

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionCodec:
    """Signs and reads the session cookie; the key lives as long as the process."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._serializer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="sluice-admin")

    def dumps(self, session: Session) -> str:
        payload: dict[str, Any] = {"c": session.csrf, "u": session.user}
        value = self._serializer.dumps(payload)
        return value if isinstance(value, str) else value.decode()

    def loads(self, value: str) -> Session | None:
        try:
            data = self._serializer.loads(value, max_age=int(self.max_age))
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        user = data.get("u")
        return Session(csrf=data["c"], user=user if isinstance(user, str) else None)

    def cookie_header(self, session: Session | None) -> str:
        """A ``Set-Cookie`` value; ``None`` clears the cookie."""
        if session is None:
            return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        return (
            f"{COOKIE}={self.dumps(session)}; Path=/; Max-Age={int(self.max_age)}; "
            "HttpOnly; SameSite=Strict"
        )


class LoginLimiter:
    """A modest brake on password guessing: ``limit`` failures per ``window`` per client."""

    def __init__(
        self, limit: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        q = self._failures.setdefault(client, deque())
        while q and now - q[0] > self._window:
            q.popleft()
        if not q:
            # Keep the table small: forget clients with nothing recent.
            del self._failures[client]
            q = deque()
        return q

    def retry_after(self, client: str) -> float:
        """Seconds until ``client`` may try again; 0 when it may try now."""
        q = self._recent(client)
        if len(q) < self._limit:
            return 0.0
        return max(0.0, self._window - (self._clock() - q[0]))

    def failed(self, client: str) -> None:
        q = self._recent(client)
        q.append(self._clock())
        self._failures[client] = q

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
