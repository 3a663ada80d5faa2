"""The outbound SMTP handshake, in one place: connect, TLS, EHLO (or HELO), AUTH.

``Session.open`` (delivery) and ``probe.test_provider`` (``sluice providers
test``, the admin page's "Test connection") both call ``handshake``. The probe
passes an observer and gets every step (name, ok or failed, the server's reply
or the error, elapsed seconds); delivery passes none. A failure raises
``HandshakeError`` whose ``text`` is the reason the queue, the provider page
and the log show.

What it adds to aiosmtplib's own ``connect``/``login``:

* **HELO fallback** (RFC 5321 § 3.2): a server that answers EHLO with 5xx
  gets HELO, and then no extension is used. With ``encryption: starttls`` that
  is a provider error instead: without EHLO there is no STARTTLS (RFC 3207).
* **One AUTH attempt per connection**: the mechanism is chosen once (the
  provider's ``auth_mechanism``; ``auto`` = the strongest offered) and its
  answer is final. ``aiosmtplib.SMTP.login`` would try every mechanism in turn,
  so a wrong password counted double against fail2ban-style lockouts.
* **Wrong encryption for the port**: ``starttls``/``none`` against an
  implicit-TLS port (the server waits for a ClientHello while we wait for its
  greeting) and ``tls`` against a plain port (its "220" read as a TLS record)
  are recognised by a second, short connection that tries the other way, and
  the reason says which ``encryption`` the port wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPHeloError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from relay.errors import SluiceError
from relay.outbound.oauth import OAuthError, TokenSource
from relay.outbound.replies import Phase, error_outcome, format_reply
from relay.tls import client_context

__all__ = [
    "BANNER_WAIT",
    "SPEAKS_PLAIN",
    "SPEAKS_TLS",
    "AuthMechanism",
    "HandshakeError",
    "Observer",
    "Step",
    "Upstream",
    "handshake",
    "insecure_auth",
    "smtp_client",
]

AuthMechanism = Literal["auto", "plain", "login", "cram-md5", "xoauth2"]

#: ``auto``: the strongest mechanism offered first. CRAM-MD5 never puts the
#: password on the wire; PLAIN before LOGIN (one round trip, RFC 4616).
_AUTO_ORDER = ("cram-md5", "plain", "login")

SPEAKS_TLS = "this port speaks implicit TLS: use encryption: tls"
SPEAKS_PLAIN = "this port speaks plain SMTP/STARTTLS: use encryption: starttls"

#: how long a greeting may be missing before we check whether the port speaks
#: TLS (the full connect timeout still applies when it does not)
BANNER_WAIT = 2.5
#: the limit for that second, sniffing connection
_SNIFF_TIMEOUT = 5.0
_GREETING = re.compile(rb"^[2-5]\d\d[ -]")


@dataclass(frozen=True, slots=True)
class Upstream:
    """Everything needed to open a connection to one provider (secrets resolved)."""

    id: str
    host: str
    port: int
    encryption: Literal["none", "starttls", "tls"]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: for XOAUTH2: obtains and refreshes access tokens
    oauth: TokenSource | None = field(default=None, repr=False)
    tls_context: ssl.SSLContext | None = field(default=None, repr=False)
    allow_insecure_auth: bool = False
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    auth_mechanism: AuthMechanism = "auto"
    #: group MAIL, RCPT and DATA in one write when the server offers PIPELINING
    #: (RFC 2920); off only for a server that offers it but mishandles it
    pipelining: bool = True


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the handshake as an observer sees it."""

    name: str
    ok: bool
    #: the server's reply, or what went wrong (never a secret)
    detail: str
    #: seconds the step took
    elapsed: float


#: receives every step as it finishes
Observer = Callable[[Step], None]


class HandshakeError(SluiceError):
    """The handshake failed at ``step``.

    Attributes:
        step: the step's name ("connect", "TLS", "EHLO", "STARTTLS", "AUTH", ...).
        detail: what the observer was told (the reply or the error).
        text: the reason for the queue and the provider's health.
        code: the server's reply code, when it gave one.
    """

    def __init__(self, step: str, detail: str, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.step = step
        self.detail = detail
        self.text = text
        self.code = code


def insecure_auth(up: Upstream, *, offers_starttls: bool = False) -> str | None:
    """Why credentials may not be sent on this connection, or ``None`` if they may.

    With ``encryption: none`` against a server that offers STARTTLS, the fix
    is ``encryption: starttls``, not sending the password in clear: the hint
    names that one.
    """
    if up.allow_insecure_auth:
        return None
    if up.encryption == "none" or up.tls_context is None:
        if offers_starttls:
            return (
                "refusing to send credentials without TLS; the server offers STARTTLS: "
                "set encryption: starttls"
            )
        return "refusing to send credentials without TLS (set allow_insecure_auth to allow it)"
    if up.tls_context.verify_mode == ssl.CERT_NONE:
        return (
            "refusing to send credentials over TLS that is not verified (tls_verify: false; "
            "set allow_insecure_auth to allow it)"
        )
    return None


def smtp_client(
    upstream: Upstream, *, local_hostname: str, timeout: float | None = None
) -> aiosmtplib.SMTP:
    """An unconnected aiosmtplib client for ``upstream``.

    ``start_tls=False``: STARTTLS is done explicitly, so that a server that
    does not offer it is refused rather than silently used in clear.
    """
    return aiosmtplib.SMTP(
        hostname=upstream.host,
        port=upstream.port,
        local_hostname=local_hostname,
        use_tls=upstream.encryption == "tls",
        start_tls=False,
        tls_context=upstream.tls_context,
        timeout=upstream.command_timeout if timeout is None else timeout,
    )


class _Steps:
    """Times each step and tells the observer; builds the error for a failed one."""

    def __init__(self, observer: Observer | None) -> None:
        self._observer = observer
        self._since = time.monotonic()

    def done(self, name: str, ok: bool, detail: str) -> None:
        now = time.monotonic()
        if self._observer is not None:
            self._observer(Step(name, ok, detail, now - self._since))
        self._since = now

    def fail(
        self, name: str, detail: str, text: str | None = None, code: int | None = None
    ) -> HandshakeError:
        self.done(name, False, detail)
        return HandshakeError(name, detail, detail if text is None else text, code)

    def error(self, name: str, exc: BaseException, hint: str = "") -> HandshakeError:
        """The failure of ``name`` because of ``exc`` (with a hint about the port)."""
        detail, text, code = _describe(exc)
        if hint:
            detail, text = f"{detail}: {hint}", f"{text}: {hint}"
        return self.fail(name, detail, text, code)


def _describe(exc: BaseException) -> tuple[str, str, int | None]:
    """(observer detail, queue reason, reply code) for an exception during the handshake."""
    if isinstance(exc, SMTPResponseException):
        reply = format_reply(exc.code, exc.message)
        return reply, reply, exc.code
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        return f"certificate verification failed: {why}", f"4.7.5 TLS failure: {exc}", None
    if isinstance(exc, ssl.SSLError):
        return f"{type(exc).__name__}: {exc}", f"4.7.5 TLS failure: {exc}", None
    if isinstance(exc, SMTPTimeoutError | TimeoutError):
        text = str(exc) or "timed out"
        return text, f"4.4.1 timeout talking to the provider: {text}", None
    if isinstance(exc, SMTPServerDisconnected | OSError):
        text = str(exc) or type(exc).__name__
        detail = f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text
        # What it means (refused, lost, cannot connect) is the reply rules' call.
        return detail, error_outcome("", exc, Phase.CONNECT).text, None
    return str(exc), f"4.7.0 {exc}", None


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind aiosmtplib's connect error, if that is what it was."""
    if isinstance(exc, ssl.SSLError):
        return exc
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, ssl.SSLError) else None


async def handshake(
    smtp: aiosmtplib.SMTP,
    up: Upstream,
    *,
    observer: Observer | None = None,
    banner_wait: float = BANNER_WAIT,
) -> None:
    """Connect ``smtp`` to ``up``, secure it as configured and authenticate.

    Args:
        smtp: an unconnected client from ``smtp_client(up)``.
        up: the provider.
        observer: told about every step as it ends (the probe's recorder).
        banner_wait: seconds without a greeting before checking for implicit TLS.

    Raises:
        HandshakeError: any step failed; the caller closes ``smtp``.
    """
    steps = _Steps(observer)
    await _connect(smtp, up, steps, banner_wait)
    await _greet(smtp, steps, helo_fallback=up.encryption != "starttls")
    if up.encryption == "starttls":
        if not smtp.supports_extension("starttls"):
            raise steps.fail(
                "STARTTLS",
                "the server does not offer STARTTLS (refusing to downgrade)",
                "4.7.4 the provider does not offer STARTTLS and encryption is "
                "'starttls'; refusing to send in clear",
            )
        try:
            reply = await smtp.starttls(tls_context=up.tls_context)
        except (SMTPException, OSError, TimeoutError) as exc:
            raise steps.error("STARTTLS", _tls_cause(exc) or exc) from exc
        steps.done(
            "STARTTLS", True, f"{format_reply(reply.code, reply.message)}; {_tls_detail(smtp)}"
        )
        # RFC 3207 § 4.2: forget what was offered in clear; ask again.
        await _greet(smtp, steps, helo_fallback=True)
    if up.username is not None:
        await _authenticate(smtp, up, up.username, steps)


async def _connect(smtp: aiosmtplib.SMTP, up: Upstream, steps: _Steps, banner_wait: float) -> None:
    connecting = asyncio.create_task(
        smtp.connect(timeout=up.connect_timeout), name=f"connect-{up.id}"
    )
    try:
        if up.encryption != "tls" and 0 < banner_wait < up.connect_timeout:
            done, _ = await asyncio.wait({connecting}, timeout=banner_wait)
            # No greeting yet: a slow server, or one waiting for our ClientHello.
            if not done and await _speaks_tls(up.host, up.port, up.connect_timeout):
                raise steps.fail(
                    "connect",
                    f"no greeting within {banner_wait:g} s: {SPEAKS_TLS}",
                    f"4.4.1 no greeting from {up.host}:{up.port}: {SPEAKS_TLS}",
                )
        greeting = await connecting
    except HandshakeError:
        raise
    except (SMTPException, OSError, TimeoutError) as exc:
        tls_error = _tls_cause(exc)
        if tls_error is None:
            raise steps.error("connect", exc) from exc
        steps.done("connect", True, f"connected to {up.host}:{up.port}")
        hint = ""
        if not isinstance(tls_error, ssl.SSLCertVerificationError) and await _speaks_plain(
            up.host, up.port, up.connect_timeout
        ):
            hint = SPEAKS_PLAIN
        raise steps.error("TLS", tls_error, hint) from exc
    finally:
        if not connecting.done():
            connecting.cancel()
            # asyncio.wait, not await: a cancellation of our caller must not be
            # swallowed along with the one we caused.
            await asyncio.wait({connecting})
        if not connecting.cancelled():
            connecting.exception()  # retrieved: any failure was reported above
    steps.done("connect", True, format_reply(greeting.code, greeting.message))
    if up.encryption == "tls":
        steps.done("TLS", True, _tls_detail(smtp, "implicit TLS"))


async def _speaks_tls(host: str, port: int, limit: float) -> bool:
    """Whether ``host:port`` completes a TLS handshake (certificate not checked).

    Only to name the problem: nothing but a ClientHello is sent, and the
    connection is closed at once.
    """
    # A sniff: nothing but a ClientHello goes over it, so nothing is checked, and
    # any version is offered (an old server is still a TLS server to name).
    ctx = client_context(verify=False, minimum_version=ssl.TLSVersion.MINIMUM_SUPPORTED)
    wait = min(_SNIFF_TIMEOUT, limit)
    try:
        async with asyncio.timeout(wait):
            _, writer = await asyncio.open_connection(
                host, port, ssl=ctx, ssl_handshake_timeout=wait
            )
    except ssl.SSLError as exc:
        # A TLS alert (e.g. the server wants a client certificate) is TLS too.
        return "ALERT" in (exc.reason or "")
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def _speaks_plain(host: str, port: int, limit: float) -> bool:
    """Whether ``host:port`` greets in plain text with an SMTP reply (RFC 5321 § 4.2)."""
    wait = min(_SNIFF_TIMEOUT, limit)
    try:
        async with asyncio.timeout(wait):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return _GREETING.match(line) is not None


async def _greet(smtp: aiosmtplib.SMTP, steps: _Steps, *, helo_fallback: bool) -> None:
    """EHLO, or HELO when EHLO is refused with 5xx and that is allowed."""
    try:
        reply = await smtp.ehlo()
    except SMTPHeloError as exc:
        refused = 500 <= exc.code < 600 and smtp.is_connected
        if not refused:
            raise steps.error("EHLO", exc) from exc
        said = format_reply(exc.code, exc.message)
        if not helo_fallback:
            raise steps.fail(
                "EHLO",
                f"{said} (no ESMTP, so no STARTTLS; refusing to send in clear)",
                f"4.7.4 the provider refused EHLO ({said}), so it cannot offer STARTTLS "
                "and encryption is 'starttls'; refusing to send in clear",
                exc.code,
            ) from exc
        # RFC 5321 § 3.2: a server that does not speak ESMTP gets HELO; no
        # extension (SIZE, 8BITMIME, SMTPUTF8, AUTH) is used afterwards.
        steps.done("EHLO", False, f"{said} (no ESMTP: trying HELO)")
        try:
            reply = await smtp.helo()
        except (SMTPException, OSError, TimeoutError) as exc:
            raise steps.error("HELO", exc) from exc
        steps.done("HELO", True, format_reply(reply.code, reply.message))
        return
    except (SMTPException, OSError, TimeoutError) as exc:
        raise steps.error("EHLO", exc) from exc
    steps.done("EHLO", True, format_reply(reply.code, reply.message))


def _mechanism(up: Upstream, offered: list[str]) -> str | None:
    """The one mechanism to use, or ``None`` if the server offers none we may use."""
    wanted = up.auth_mechanism
    if up.oauth is not None:
        wanted = "xoauth2"
    if wanted == "auto":
        return next((m for m in _AUTO_ORDER if m in offered), None)
    return wanted if wanted in offered else None


async def _authenticate(smtp: aiosmtplib.SMTP, up: Upstream, user: str, steps: _Steps) -> None:
    """One AUTH exchange with one mechanism; its answer is final for this connection."""
    problem = insecure_auth(up, offers_starttls=smtp.supports_extension("starttls"))
    if problem is not None:
        raise steps.fail("AUTH", problem, f"4.7.0 {problem}")
    offered = smtp.server_auth_methods
    if not smtp.supports_extension("auth"):
        why = "it answered HELO only" if not smtp.supports_esmtp else "not in its EHLO reply"
        raise steps.fail(
            "AUTH",
            f"the server does not offer AUTH ({why})",
            f"4.7.0 the provider does not offer AUTH ({why}) and a username is configured",
        )
    mech = _mechanism(up, offered)
    if mech is None:
        listed = " ".join(m.upper() for m in offered) or "none"
        wanted = "xoauth2" if up.oauth is not None else up.auth_mechanism
        what = "a mechanism Sluice supports" if wanted == "auto" else f"AUTH {wanted.upper()}"
        detail = f"the server does not offer {what} (it offers: {listed})"
        raise steps.fail("AUTH", detail, f"4.7.0 {detail}; see auth_mechanism")
    name = mech.upper()
    try:
        if mech == "xoauth2":
            assert up.oauth is not None  # _mechanism chose it because of oauth
            try:
                token = await up.oauth.token()
            except OAuthError as exc:
                raise steps.fail(
                    "AUTH", f"XOAUTH2: {exc.text}", f"4.7.0 XOAUTH2: {exc.text}"
                ) from None
            try:
                reply = await smtp.auth_xoauth2(user, token)
            except SMTPAuthenticationError:
                up.oauth.invalidate()  # the next attempt fetches a new token
                raise
        else:
            method = {
                "cram-md5": smtp.auth_crammd5,
                "plain": smtp.auth_plain,
                "login": smtp.auth_login,
            }[mech]
            reply = await method(user, up.password or "")
    except SMTPAuthenticationError as exc:
        said = format_reply(exc.code, exc.message)
        if up.oauth is not None:  # a server may echo the XOAUTH2 payload's token
            said = up.oauth.redact(said)
        raise steps.fail(
            "AUTH",
            f"{said} ({name} as {user})",
            f"authentication failed: {said} ({name})",
            exc.code,
        ) from exc
    except (SMTPException, OSError, TimeoutError) as exc:
        raise steps.error("AUTH", exc) from exc
    steps.done("AUTH", True, f"{format_reply(reply.code, reply.message)} ({name} as {user})")


def _tls_detail(smtp: aiosmtplib.SMTP, prefix: str = "") -> str:
    """Protocol version and cipher of the TLS layer, for the observer."""
    try:
        info = smtp.get_transport_info("ssl_object")
    except SMTPServerDisconnected:
        info = None
    if isinstance(info, ssl.SSLObject):
        text = f"{info.version()} {(info.cipher() or ('?',))[0]}"
        return f"{prefix} {text}".strip()
    return prefix or "TLS"
