"""Test connection: talk to one provider step by step and report every reply.

``sluice providers test`` and the admin page's "Test connection" button call
``test_provider``. It connects, reads the greeting, says EHLO, negotiates TLS
(STARTTLS or implicit), authenticates the way delivery would (never over an
unencrypted connection unless ``allow_insecure_auth``), and QUITs. No mail is
sent. The report holds the server's replies, never a password or token.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPException, SMTPResponseException

from relay.config import DeliverySettings, ProviderSettings
from relay.outbound.oauth import OAuthError, TokenSource
from relay.outbound.providers import upstream_of
from relay.outbound.session import insecure_auth, smtp_client

__all__ = ["TestReport", "TestStep", "test_provider"]


@dataclass(frozen=True, slots=True)
class TestStep:
    name: str
    ok: bool
    detail: str

    __test__ = False  # not a pytest class


@dataclass(frozen=True, slots=True)
class TestReport:
    ok: bool
    steps: list[TestStep]

    __test__ = False


def _reply(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}"


def _error(exc: BaseException) -> str:
    if isinstance(exc, SMTPResponseException):
        return _reply(exc.code, exc.message)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if isinstance(exc, OSError) else text


async def test_provider(
    settings: ProviderSettings,
    *,
    local_hostname: str,
    timeout: float = 15.0,  # noqa: ASYNC109 - a per-step limit, not one for the whole call
) -> TestReport:
    """Connect, EHLO, TLS, AUTH and QUIT against one provider; never raises for its faults."""
    steps: list[TestStep] = []

    def step(name: str, ok: bool, detail: str) -> None:
        steps.append(TestStep(name, ok, detail))

    def fail(name: str, detail: str) -> TestReport:
        step(name, False, detail)
        return TestReport(False, steps)

    t = min(timeout, settings.timeout or timeout)
    delivery = DeliverySettings(connect_timeout=t, command_timeout=t, data_timeout=t)
    try:
        up = upstream_of(settings, delivery)
    except LookupError as exc:
        return fail("configuration", f"secret unavailable: {exc}")
    smtp = smtp_client(up, local_hostname=local_hostname, timeout=t)
    try:
        try:
            greeting = await smtp.connect(timeout=t)
        except (SMTPException, OSError, TimeoutError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError):
                exc = cause
            name = "TLS" if isinstance(exc, ssl.SSLError) else "connect"
            if name == "TLS":
                step("connect", True, f"connected to {up.host}:{up.port}")
            return fail(name, _error(exc))
        step("connect", True, _reply(greeting.code, greeting.message))
        if up.encryption == "tls":
            step("TLS", True, _tls_detail(smtp, "implicit TLS"))
        try:
            ehlo = await smtp.ehlo()
        except (SMTPException, OSError, TimeoutError) as exc:
            return fail("EHLO", _error(exc))
        step("EHLO", True, _reply(ehlo.code, ehlo.message))
        if up.encryption == "starttls":
            if not smtp.supports_extension("starttls"):
                return fail(
                    "STARTTLS", "the server does not offer STARTTLS (refusing to downgrade)"
                )
            try:
                reply = await smtp.starttls(tls_context=up.tls_context)
                await smtp.ehlo()
            except (SMTPException, OSError, TimeoutError) as exc:
                cause = exc.__cause__ or exc.__context__
                return fail("STARTTLS", _error(cause if isinstance(cause, ssl.SSLError) else exc))
            step("STARTTLS", True, f"{_reply(reply.code, reply.message)}; {_tls_detail(smtp)}")
        if up.username is not None:
            if (problem := insecure_auth(up)) is not None:
                return fail("AUTH", problem)
            try:
                if settings.oauth2 is not None:
                    source = TokenSource(settings.oauth2, provider_id=settings.id)
                    token = await source.token()
                    reply = await smtp.auth_xoauth2(up.username, token)
                    mech = "XOAUTH2"
                else:
                    reply = await smtp.login(up.username, up.password or "")
                    mech = "login"
            except OAuthError as exc:
                return fail("AUTH", f"XOAUTH2: {exc.text}")
            except (SMTPException, OSError, TimeoutError) as exc:
                return fail("AUTH", _error(exc))
            step("AUTH", True, f"{mech} as {up.username}: {_reply(reply.code, reply.message)}")
        try:
            bye = await smtp.quit(timeout=t)
        except (SMTPException, OSError, TimeoutError) as exc:
            return fail("QUIT", _error(exc))
        step("QUIT", True, _reply(bye.code, bye.message))
        return TestReport(True, steps)
    finally:
        smtp.close()


def _tls_detail(smtp: aiosmtplib.SMTP, prefix: str = "") -> str:
    info = smtp.get_transport_info("ssl_object")
    if isinstance(info, ssl.SSLObject):
        text = f"{info.version()} {(info.cipher() or ('?',))[0]}"
        return f"{prefix} {text}".strip()
    return prefix or "TLS"
