"""classify() is the one place where a reply or an error becomes an outcome."""

from __future__ import annotations

import ssl

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from relay.model import Delivered, PermFailure, TempFailure
from relay.outbound.session import ProviderError, classify, retry_hint


@pytest.mark.parametrize(
    ("code", "kind", "provider_fault"),
    [
        (250, Delivered, None),
        (550, PermFailure, None),
        (554, PermFailure, None),
        (451, TempFailure, False),
        (452, TempFailure, False),
        (421, TempFailure, True),
        (-1, TempFailure, False),  # garbled reply: local, temporary
    ],
)
def test_reply_codes(code: int, kind: type, provider_fault: bool | None) -> None:
    out = classify("a@x", code=code, text="words")
    assert isinstance(out, kind)
    assert out.code == code
    if provider_fault is not None:
        assert isinstance(out, TempFailure)
        assert out.provider_fault is provider_fault


def test_response_too_long_is_not_the_upstreams_verdict() -> None:
    out = classify("a@x", SMTPResponseException(500, "Response too long"))
    assert isinstance(out, TempFailure)


@pytest.mark.parametrize(
    "exc",
    [
        SMTPServerDisconnected("gone"),
        SMTPConnectError("refused"),
        SMTPReadTimeoutError("slow"),
        TimeoutError(),
        ConnectionResetError(),
        ssl.SSLError("bad cert"),
        SMTPAuthenticationError(535, "bad credentials"),
        ProviderError("4.7.4 no STARTTLS"),
    ],
)
def test_connection_level_problems_are_the_providers_fault(exc: BaseException) -> None:
    out = classify("a@x", exc)
    assert isinstance(out, TempFailure)
    assert out.provider_fault


def test_refused_recipient_keeps_code_and_text() -> None:
    out = classify("a@x", SMTPRecipientRefused(550, "5.1.1 no such user", "a@x"))
    assert out == PermFailure("a@x", 550, "550 5.1.1 no such user")


def test_unexpected_exception_is_deferred_not_failed(caplog: pytest.LogCaptureFixture) -> None:
    out = classify("a@x", KeyError("bug"))
    assert isinstance(out, TempFailure)
    assert not out.provider_fault
    assert "unexpected delivery error" in caplog.text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("4.7.0 Too many messages, try again in 5 minutes", 300),
        ("please retry in 30s", 30),
        ("try again later in 2 hours", 7200),
        ("4.2.0 mailbox busy", None),
    ],
)
def test_retry_hint(text: str, seconds: float | None) -> None:
    assert retry_hint(text) == seconds
