"""Who may use the admin page, how a request proves it, and the brake on guessing.

Three ways in, checked in this order:

* a bearer token (``admin.api_token_env`` / ``api_token_file``), for scripts;
* HTTP Basic with the admin user name and password, for scripts and scrapers;
* the session cookie set by the login form, for browsers.

With no password configured the admin is open (the daemon only allows that on
a loopback address), and every visitor still gets a session so that forms
carry a CSRF token.

Sessions ride on Starlette's ``SessionMiddleware`` (a signed cookie, key made
at start-up: a restart logs everyone out and no key is stored; on a store shared
by a fleet, the key kept in the store, so a login holds on every node). What it holds
is a ``Session``: the user name, a synchronizer CSRF token, the server-side
*session version* it was issued under and a keyed fingerprint of the password
it was issued under. ``Sessions.read`` refuses a login session whose version
is not the spool's current one (logout and ``sluice admin revoke-sessions``
start a new version, so every cookie issued before is void) or whose password
fingerprint is not the configured password's (a password change ends every
session). A cookie is a bearer credential: without this a cookie captured
before logout stayed good for ``session_max_age``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from relay.backoff import exponential
from relay.config import AdminSettings
from relay.operations.actor import Actor
from relay.operations.sessions import revoke_admin_sessions

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "DEVICE_COOKIE",
    "Credentials",
    "LoginLimiter",
    "Session",
    "SessionVersions",
    "Sessions",
    "hash_password",
    "source_of",
]

COOKIE = "sluice_session"
DEVICE_COOKIE = "sluice_device"
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
    """What the session cookie holds (as a plain dict, through ``SessionMiddleware``)."""

    csrf: str
    user: str | None = None
    #: the server-side session version this login was issued under
    version: int = 0
    #: keyed fingerprint of the password this login was issued under
    pw: str = ""

    @classmethod
    def anonymous(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(24))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Session | None:
        csrf, user = data.get("c"), data.get("u")
        version, pw = data.get("v", 0), data.get("p", "")
        if not isinstance(csrf, str) or not csrf:
            return None
        if not isinstance(version, int) or not isinstance(pw, str):
            return None
        return cls(csrf=csrf, user=user if isinstance(user, str) else None, version=version, pw=pw)

    def to_dict(self) -> dict[str, Any]:
        return {"c": self.csrf, "u": self.user, "v": self.version, "p": self.pw}

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionVersions(Protocol):
    """Where the server-side session version lives (the spool's ``meta`` table)."""

    async def admin_session_version(self) -> int: ...

    async def revoke_admin_sessions(self) -> int: ...


class Sessions:
    """Issues, checks and ends login sessions; one per admin app.

    ``secret_key`` signs the session cookie (given to ``SessionMiddleware``)
    and the trusted-device cookie of the login brake. On a spool of one host
    it is made here and never stored (a restart logs everyone out). On a store
    shared by a fleet the daemon passes the key kept in the store
    (``Spool.admin_session_key``), so that a cookie from one node's admin is
    good on every node; the session version that ends it is the store's too.
    """

    def __init__(
        self,
        credentials: Credentials,
        versions: SessionVersions,
        *,
        device_max_age: float,
        secret_key: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.versions = versions
        self.secret_key = secret_key if secret_key is not None else secrets.token_urlsafe(32)
        self.device_max_age = device_max_age
        self._key = self.secret_key.encode()
        self._devices = URLSafeTimedSerializer(self.secret_key, salt="sluice-admin-device")

    def _fingerprint(self) -> str:
        # Keyed (HMAC under the process key), so the readable cookie is no
        # offline oracle for a plain-text password.
        secret = self.credentials.password_hash or self.credentials.password or ""
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()[:32]

    async def read(self, data: Mapping[str, Any]) -> Session | None:
        """The session in ``data``; None if there is none or it has been ended."""
        session = Session.from_dict(data)
        if session is None or session.user is None:
            return session
        if not hmac.compare_digest(session.pw, self._fingerprint()):
            return None  # issued under another password
        if session.version != await self.versions.admin_session_version():
            return None  # logged out or revoked since
        return session

    @staticmethod
    def start_anonymous(store: MutableMapping[str, Any]) -> Session:
        session = Session.anonymous()
        store.clear()
        store.update(session.to_dict())
        return session

    async def log_in(self, store: MutableMapping[str, Any], user: str) -> Session:
        # A fresh CSRF token at login: a token seen before login is worth nothing after.
        session = Session(
            csrf=secrets.token_urlsafe(24),
            user=user,
            version=await self.versions.admin_session_version(),
            pw=self._fingerprint(),
        )
        store.clear()
        store.update(session.to_dict())
        return session

    async def log_out(self, store: MutableMapping[str, Any], who: Actor) -> Session:
        """End every login session (one admin account: logout means everywhere)."""
        await revoke_admin_sessions(self.versions, who)
        return self.start_anonymous(store)

    def device_cookie(self, user: str, device: str | None) -> str:
        """``Set-Cookie`` for the trusted-device cookie of a browser that just logged in."""
        value = self._devices.dumps({"u": user, "d": device or secrets.token_urlsafe(16)})
        text = value if isinstance(value, str) else value.decode()
        return (
            f"{DEVICE_COOKIE}={text}; Path=/login; Max-Age={int(self.device_max_age)}; "
            "HttpOnly; SameSite=Strict"
        )

    def device(self, cookie: str | None, user: str) -> str | None:
        """The device ID in a valid trusted-device cookie issued for ``user``."""
        if not cookie:
            return None
        try:
            data = self._devices.loads(cookie, max_age=int(self.device_max_age))
        except BadSignature:
            return None
        if not isinstance(data, dict) or data.get("u") != user:
            return None
        device = data.get("d")
        return device if isinstance(device, str) else None


# --------------------------------------------------------------- login brake
#
# Design of the brake on password and token guessing (issue #14, item 8).
#
# * Argon2 already makes each guess cost ~50 ms of CPU; the brake bounds how
#   many guesses an attacker gets per hour, without letting anyone lock the
#   real admin out.
# * Failures are counted per *key*; a password attempt is checked against two:
#   its source and the account (user name) it names; a bearer token attempt
#   against its source and the API token. Basic failures count like
#   login-form failures (same keys); bearer failures count under keys of
#   their own, so that a flood of wrong passwords does not delay the scripts
#   that hold the right token (and a flood of wrong tokens not the login).
# * A source is a network, not an address: IPv4 /24, IPv6 /64, and the whole
#   loopback range (127.0.0.0/8 and ::1) is ONE source, since an SSH tunnel,
#   a local user and a proxy all arrive from there and any local user can
#   pick any 127.x.y.z. Rotating addresses inside a source gains nothing, and
#   the account key limits an attacker spread over many networks.
# * No hard lockout. After FREE failures a key must wait an exponentially
#   growing, capped delay from its last failure: min(CAP, BASE * 2**(n-FREE))
#   (5 s, 10 s, 20 s, 40 s, 60 s, 60 s, ...). Attempts refused during a delay
#   are answered 429 with Retry-After, are not checked and are NOT counted:
#   a flood cannot push the delay further out, so the correct password is
#   never refused for more than CAP after the last real failure. The
#   attacker's rate settles at one guess per CAP per key (60/h).
# * A trusted-device cookie (OWASP "device cookies"): a browser that logged in
#   successfully gets a signed ``sluice_device`` cookie naming the user. A
#   login that presents a valid one for the user it names is counted under
#   that device's own key instead of the source and account keys: a flood from
#   the same loopback source, or against the account, does not delay the
#   operator's usual browser at all.
# * A success clears the keys it was checked under. A key with no failure for
#   FORGET seconds is forgotten, and the table holds at most MAX_KEYS keys
#   (the oldest go first), so memory stays bounded under address rotation.
# * The brake lives in the process: a restart forgets it (and logs everyone
#   out). That is deliberate: it stores nothing.


def source_of(client: str) -> str:
    """The network a client address is counted under (see the design above)."""
    try:
        addr = ipaddress.ip_address(client)
    except ValueError:
        return client  # not an IP (a test client, a Unix socket): itself
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return "loopback"
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


@dataclass(slots=True)
class _Failures:
    count: int
    last: float


class LoginLimiter:
    """Counts failed logins per key and says how long a key must wait."""

    FREE = 5
    BASE = 5.0
    CAP = 60.0
    FORGET = 15 * 60.0
    MAX_KEYS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, _Failures] = {}

    def __len__(self) -> int:
        """How many keys are remembered (bounded by MAX_KEYS)."""
        return len(self._failures)

    @staticmethod
    def keys(client: str, account: str | None, device: str | None = None) -> tuple[str, ...]:
        """The keys an attempt counts under; ``account=None`` means the API token."""
        if device is not None:
            return (f"device:{device}",)
        if account is None:
            return (f"token-source:{source_of(client)}", "token")
        return (f"source:{source_of(client)}", "account:" + account.casefold()[:128])

    def delay(self, failures: int) -> float:
        if failures < self.FREE:
            return 0.0
        return exponential(failures - self.FREE + 1, first=self.BASE, cap=self.CAP)

    def _get(self, key: str, now: float) -> _Failures | None:
        rec = self._failures.get(key)
        if rec is not None and now - rec.last > max(self.FORGET, self.delay(rec.count)):
            del self._failures[key]
            return None
        return rec

    def retry_after(self, keys: Iterable[str]) -> float:
        """Seconds until an attempt under ``keys`` is checked; 0 when it is checked now."""
        now = self._clock()
        wait = 0.0
        for key in keys:
            rec = self._get(key, now)
            if rec is not None:
                wait = max(wait, rec.last + self.delay(rec.count) - now)
        return wait

    def failed(self, keys: Iterable[str]) -> None:
        now = self._clock()
        for key in keys:
            rec = self._get(key, now)
            count = rec.count + 1 if rec is not None else 1
            self._failures.pop(key, None)  # re-insert: insertion order is age order
            self._failures[key] = _Failures(count, now)
        while len(self._failures) > self.MAX_KEYS:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)
