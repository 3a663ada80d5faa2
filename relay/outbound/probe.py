"""Test connection: talk to one provider step by step and report every reply.

``sluice providers test`` and the admin page's "Test connection" button call
``test_provider``. It runs the very handshake delivery uses
(``handshake.handshake``: connect, TLS or STARTTLS, EHLO or HELO, one AUTH,
never over an unencrypted connection unless ``allow_insecure_auth``) with an
observer that records each step, then QUITs. No mail is sent. The report
holds the server's replies, never a password or token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiosmtplib import SMTPException

from relay.config import DeliverySettings, ProviderSettings
from relay.outbound.handshake import HandshakeError, Step, handshake, smtp_client
from relay.outbound.oauth import TokenSource
from relay.outbound.providers import upstream_of

__all__ = ["TestReport", "TestStep", "connection_answer", "test_provider"]


@dataclass(frozen=True, slots=True)
class TestStep:
    name: str
    ok: bool
    #: the server's reply, or what went wrong
    detail: str
    #: seconds the step took
    elapsed: float = 0.0

    __test__ = False  # not a pytest class


@dataclass(frozen=True, slots=True)
class TestReport:
    ok: bool
    steps: list[TestStep]

    __test__ = False


async def test_provider(
    settings: ProviderSettings,
    *,
    local_hostname: str,
    timeout: float = 15.0,  # noqa: ASYNC109 - a per-step limit, not one for the whole call
) -> TestReport:
    """Connect, EHLO, TLS, AUTH and QUIT against one provider; never raises for its faults."""
    steps: list[TestStep] = []

    def record(step: Step) -> None:
        steps.append(TestStep(step.name, step.ok, step.detail, round(step.elapsed, 3)))

    t = min(timeout, settings.timeout or timeout)
    delivery = DeliverySettings(connect_timeout=t, command_timeout=t, data_timeout=t)
    oauth = (
        TokenSource(settings.oauth2, provider_id=settings.id)
        if settings.oauth2 is not None
        else None
    )
    try:
        up = upstream_of(settings, delivery, oauth=oauth)
    except LookupError as exc:
        record(Step("configuration", False, f"secret unavailable: {exc}", 0.0))
        return TestReport(False, steps)
    smtp = smtp_client(up, local_hostname=local_hostname, timeout=t)
    try:
        try:
            await handshake(smtp, up, observer=record)
        except HandshakeError:
            return TestReport(False, steps)  # the observer has the failed step
        since = time.monotonic()
        try:
            bye = await smtp.quit(timeout=t)
        except (SMTPException, OSError, TimeoutError) as exc:
            record(Step("QUIT", False, str(exc) or type(exc).__name__, time.monotonic() - since))
            return TestReport(False, steps)
        detail = f"{bye.code} {' '.join(bye.message.split())}"
        record(Step("QUIT", True, detail, time.monotonic() - since))
        return TestReport(True, steps)
    finally:
        smtp.close()


async def connection_answer(
    settings: ProviderSettings,
    *,
    local_hostname: str,
    timeout: float = 15.0,  # noqa: ASYNC109 - a per-step limit, not one for the whole call
) -> str | None:
    """Test connection's verdict for a config edit: "STEP: reply" of the failed step, or None.

    Save runs exactly the check the Test connection button runs; the step
    name tells the form which field to show the answer beside ("AUTH:" by
    the password, "connect:" by the host).
    """
    report = await test_provider(settings, local_hostname=local_hostname, timeout=timeout)
    for step in report.steps:
        if not step.ok:
            return f"{step.name}: {step.detail}"
    return None if report.ok else "the connection test failed"
