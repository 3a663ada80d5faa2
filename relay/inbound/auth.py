"""SMTP AUTH for ``smtp.users``: password checks off the event loop, and a back-off per client.

What Postfix's submission service does with Dovecot SASL behind it, in one
process: a failed AUTH is answered ``535`` only after ``smtp.auth_failure_delay``
(1 s; Dovecot's ``auth_failure_delay`` is 2 s), and an address with
``smtp.auth_failure_limit`` failures (5) within ``smtp.auth_lockout`` (10 min)
is answered ``421`` to AUTH and disconnected until that long after its last
failure, without a password being checked (as Postfix's anvil rate limits
end a session with 421). The delay counts from the start of the AUTH, so an
unknown user, refused without an argon2 check, is answered no sooner than a
wrong password.

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

The failures are counted once for every accepting process (``FailureCounter``,
kept by the daemon; an accept worker asks it over its channel, as for the
``smtp.policies`` rates), so that a client spread over N accept workers gets
``auth_failure_limit`` attempts, not N times it. A worker whose daemon does
not answer within 10 s answers that AUTH ``454 4.7.0`` (a temporary failure,
RFC 4954) without checking the password, as a MAIL whose rate question goes
unanswered gets ``451``: a stuck daemon must not open the door wider.
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
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relay.config import SmtpSettings, SmtpUser
from relay.secrets import SecretError

__all__ = [
    "R_AUTH_LOCKED",
    "R_AUTH_UNAVAILABLE",
    "VERIFY_AT_ONCE",
    "FailureCounter",
    "FailureGate",
    "LocalFailures",
    "SmtpAuth",
    "failure_line",
]

log = logging.getLogger("sluice.smtp")

#: argon2 verifications at once per process (each is tens of ms of one core)
VERIFY_AT_ONCE = 2
#: remembered verified (user, password) digests per process
_VERIFIED_CACHE = 256
#: addresses whose failures are remembered at most (the oldest are forgotten)
_TRACKED_MAX = 10_000

R_AUTH_OK = "235 2.7.0 Authentication successful"
R_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
#: the reply (then the connection is closed) to AUTH from an address over the failure limit
R_AUTH_LOCKED = "421 4.7.0 Too many failed authentications from {ip}; try again in {wait:.0f} s"
#: the reply to AUTH when the failure count (the daemon's) does not answer
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


class FailureCounter:
    """Failed AUTHs per client address, for every accepting process (kept by the daemon).

    Memory is at most ``limit`` timestamps per address, for the
    ``_TRACKED_MAX`` addresses that failed most recently.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: client IP -> monotonic times of its recent failures, least recently failed first
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def locked_for(self, ip: str, limit: int, lockout: float) -> float:
        """Seconds until ``ip`` may try AUTH again (0: it may now)."""
        times = self._failures.get(ip)
        if not times:
            return 0.0
        now = self._clock()
        while times and now - times[0] > lockout:
            times.popleft()
        if len(times) < limit:
            return 0.0
        return max(0.0, times[-1] + lockout - now)

    def record(self, ip: str, limit: int, lockout: float) -> float:
        """Count one failure of ``ip``; then seconds until it may try again."""
        times = self._failures.pop(ip, None)
        if times is None or times.maxlen != limit:  # new, or the limit changed in a reload
            times = deque(times or (), maxlen=limit)
        times.append(self._clock())
        self._failures[ip] = times
        while len(self._failures) > _TRACKED_MAX:
            self._failures.popitem(last=False)
        return self.locked_for(ip, limit, lockout)

    def __len__(self) -> int:
        return len(self._failures)


class FailureGate(Protocol):
    """Where ``SmtpAuth`` counts failures: asks the lockout, or counts one (``failed``).

    Returns the seconds until the address may try again; may raise
    ``TimeoutError`` (an accept worker whose daemon does not answer).
    """

    async def failures(self, ip: str, limit: int, lockout: float, *, failed: bool) -> float: ...


class LocalFailures:
    """A ``FailureGate`` over a counter in this process (the daemon's, or a test's)."""

    def __init__(self, counter: FailureCounter | None = None) -> None:
        self.counter = FailureCounter() if counter is None else counter

    async def failures(self, ip: str, limit: int, lockout: float, *, failed: bool) -> float:
        if failed:
            return self.counter.record(ip, limit, lockout)
        return self.counter.locked_for(ip, limit, lockout)


class SmtpAuth:
    """The users of one process's listeners, checked against ``smtp.users`` at each AUTH.

    Args:
        settings: the current ``smtp`` settings (read at each AUTH).
        on_result: told ``ok``, ``failed``, ``locked`` or ``unavailable`` after each
            AUTH (metrics).
        failures: counts failures (the daemon's count, for every accepting
            process); by default a count in this process.
        clock: monotonic seconds (of that default count).
    """

    def __init__(
        self,
        settings: Callable[[], SmtpSettings],
        on_result: Callable[[str], None],
        *,
        failures: FailureGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._on_result = on_result
        self._failures = LocalFailures(FailureCounter(clock)) if failures is None else failures
        self._verifying = asyncio.Semaphore(VERIFY_AT_ONCE)
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._verified_for: SmtpSettings | None = None

    async def locked_for(self, ip: str, *, failed: bool = False) -> float:
        """Seconds until ``ip`` may try AUTH again (0: it may now), counting a failure first.

        Raises:
            TimeoutError: the count (the daemon's) did not answer.
        """
        s = self._settings()
        return await self._failures.failures(
            ip, s.auth_failure_limit, s.auth_lockout, failed=failed
        )

    async def authenticate(
        self, ip: str, mechanism: str, login: bytes, password: bytes
    ) -> tuple[str | None, str]:
        """Check one AUTH: (the user's name or ``None``, the reply to send).

        A refusal comes ``smtp.auth_failure_delay`` after the AUTH began
        (counting the check, so that an unknown user, refused without argon2,
        takes as long as a wrong password); an address over the failure limit
        is refused at once without a check.
        """
        began = time.monotonic()
        name = login.decode("utf-8", "replace")
        try:
            wait = await self.locked_for(ip)
        except TimeoutError:
            log.error(
                "auth refused client=%s mechanism=%s reason=no-failure-count "
                "(the daemon did not answer): 454",
                ip,
                mechanism,
                extra={"event": "auth"},
            )
            self._on_result("unavailable")
            return None, R_AUTH_UNAVAILABLE
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
        log.warning(failure_line(ip, name, mechanism, reason), extra={"event": "auth"})
        try:
            await self.locked_for(ip, failed=True)
        except TimeoutError:
            log.error("auth failure of client=%s not counted: the daemon did not answer", ip)
        self._on_result("failed")
        await asyncio.sleep(max(0.0, settings.auth_failure_delay - (time.monotonic() - began)))
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
