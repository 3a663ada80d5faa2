"""SMTP AUTH for ``smtp.users``: password checks off the event loop, and a back-off per client.

What Postfix's submission service does with Dovecot SASL behind it, in one
process: a failed AUTH is answered ``535`` only after ``smtp.auth_failure_delay``
(1 s; Dovecot's ``auth_failure_delay`` is 2 s), and an address with
``smtp.auth_failure_limit`` failures (5) within ``smtp.auth_lockout`` (10 min)
is refused AUTH with ``454`` until that long after its last failure, without
a password being checked (Postfix's anvil does the same with 421 per client).
Each failure is one log line a fail2ban filter matches::

    auth failed client=203.0.113.9 user=app mechanism=PLAIN reason=bad-password

and counts in ``sluice_smtp_auth_total{result=...}``.

argon2 takes tens of milliseconds of CPU by design, so it runs in a thread
(``asyncio.to_thread``), at most ``VERIFY_AT_ONCE`` at a time per process: a
flood of AUTHs queues there instead of taking every core. A verified
(user, password) pair is remembered (as a keyed digest, never the password)
until the settings change, so that a client connecting once per message (msmtp,
PHP) does not pay an argon2 verification per message; the admin does the same
for its Basic auth.

The back-off is per process: with accept workers each keeps its own count.
Why not a library: the pieces (argon2-cffi for the hash, a deque per address)
are a few lines each; a SASL daemon would be a second service to run.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relay.config import SmtpSettings, SmtpUser
from relay.secrets import SecretError

__all__ = ["R_AUTH_LOCKED", "VERIFY_AT_ONCE", "SmtpAuth", "failure_line"]

log = logging.getLogger("sluice.smtp")

#: argon2 verifications at once per process (each is tens of ms of one core)
VERIFY_AT_ONCE = 2
#: remembered verified (user, password) digests per process
_VERIFIED_CACHE = 256
#: addresses whose failures are remembered at most (the oldest are forgotten)
_TRACKED_MAX = 10_000

R_AUTH_OK = "235 2.7.0 Authentication successful"
R_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
R_AUTH_LOCKED = "454 4.7.0 Too many failed authentications from {ip}; try again in {wait:.0f} s"
R_AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure; try again later"

#: what a user name may show in a log line: no spaces, quotes or control characters
_UNSAFE = re.compile(r"[^\x21-\x7e]|[\"\\=]")


def failure_line(ip: str, user: str, mechanism: str, reason: str) -> str:
    """The log line of one failed AUTH (the README's fail2ban filter matches it)."""
    shown = _UNSAFE.sub("?", user)[:64] or "-"
    return f"auth failed client={ip} user={shown} mechanism={mechanism} reason={reason}"


def _argon2_verify(password_hash: str, password: bytes) -> bool:
    try:
        return PasswordHasher().verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _check(user: SmtpUser, password: bytes) -> bool:
    """Whether ``password`` is ``user``'s (blocking: argon2, or reading a secret file)."""
    if user.password_hash is not None:
        return _argon2_verify(user.password_hash.get_secret_value(), password)
    if user.password is None:
        return False
    try:
        wanted = user.password.resolve().get_secret_value().encode()
    except SecretError as exc:
        log.error("smtp user %s: cannot read the password: %s", user.name, exc)
        return False
    return hmac.compare_digest(wanted, password)


class SmtpAuth:
    """The users of one process's listeners, checked against ``smtp.users`` at each AUTH.

    Args:
        settings: the current ``smtp`` settings (read at each AUTH).
        on_result: told ``ok``, ``failed`` or ``locked`` after each AUTH (metrics).
        clock: monotonic seconds.
    """

    def __init__(
        self,
        settings: Callable[[], SmtpSettings],
        on_result: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._on_result = on_result
        self._clock = clock
        self._verifying = asyncio.Semaphore(VERIFY_AT_ONCE)
        #: client IP -> monotonic times of its recent failures, least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._verified_for: SmtpSettings | None = None

    def locked_for(self, ip: str) -> float:
        """Seconds until ``ip`` may try AUTH again (0: it may now)."""
        s = self._settings()
        times = self._failures.get(ip)
        if not times:
            return 0.0
        now = self._clock()
        while times and now - times[0] > s.auth_lockout:
            times.popleft()
        if len(times) < s.auth_failure_limit:
            return 0.0
        return max(0.0, times[-1] + s.auth_lockout - now)

    async def authenticate(
        self, ip: str, mechanism: str, login: bytes, password: bytes
    ) -> tuple[str | None, str]:
        """Check one AUTH: (the user's name or ``None``, the reply to send).

        A refusal comes after ``smtp.auth_failure_delay``; an address over
        the failure limit is refused at once without a check.
        """
        wait = self.locked_for(ip)
        name = login.decode("utf-8", "replace")
        if wait > 0:
            log.warning(
                "auth refused client=%s user=%s mechanism=%s reason=too-many-failures "
                "(%.0f s left)",
                ip,
                _UNSAFE.sub("?", name)[:64] or "-",
                mechanism,
                wait,
                extra={"event": "auth"},
            )
            self._on_result("locked")
            return None, R_AUTH_LOCKED.format(ip=ip, wait=wait)
        settings = self._settings()
        user = next((u for u in settings.users if u.name == name), None)
        if user is not None and await self._verify(settings, user, password):
            self._on_result("ok")
            log.info("auth ok client=%s user=%s mechanism=%s", ip, user.name, mechanism)
            return user.name, R_AUTH_OK
        reason = "unknown-user" if user is None else "bad-password"
        self._record_failure(ip)
        log.warning(failure_line(ip, name, mechanism, reason), extra={"event": "auth"})
        self._on_result("failed")
        await asyncio.sleep(settings.auth_failure_delay)
        return None, R_AUTH_FAILED

    async def _verify(self, settings: SmtpSettings, user: SmtpUser, password: bytes) -> bool:
        if settings is not self._verified_for:  # a reload: passwords may have changed
            self._verified.clear()
            self._verified_for = settings
        digest = hmac.new(self._key, user.name.encode() + b"\0" + password, hashlib.sha256).digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        async with self._verifying:
            ok = await asyncio.to_thread(_check, user, password)
        if ok:
            self._verified[digest] = None
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return ok

    def _record_failure(self, ip: str) -> None:
        times = self._failures.pop(ip, None) or deque(maxlen=self._settings().auth_failure_limit)
        times.append(self._clock())
        self._failures[ip] = times
        while len(self._failures) > _TRACKED_MAX:
            self._failures.popitem(last=False)
