"""relay.outbound.replies is the one place where a reply or an error becomes an outcome.

The table cases quote the reply texts the providers document (SES, Microsoft
365, Gmail, SendGrid, Mailgun) and those of greylisting and Postfix's
smtp-sink; each names the rule it must meet, and every rule is met by a case.
"""

from __future__ import annotations

import ssl
from typing import NamedTuple

import aiosmtplib
import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from relay.model import Delivered, Outcome, PermFailure, Scope, TempFailure
from relay.outbound.replies import (
    RULES,
    Phase,
    error_outcome,
    final,
    health_verdict,
    judge,
    no_smtputf8,
    reply_outcome,
    retry_hint,
    shared_refusal,
)
from relay.outbound.session import ProviderError, classify
from tests.peers import free_port

C, M, R, D = Phase.CONNECT, Phase.MAIL, Phase.RCPT, Phase.DATA
T, P = TempFailure, PermFailure


class Case(NamedTuple):
    source: str
    phase: Phase
    code: int | None
    text: str
    shared: bool
    kind: type
    scope: Scope
    rule: str


CASES = [
    # ---- Gmail (support.google.com/a/answer/3726730)
    Case("gmail", R, 421, "4.7.28 [203.0.113.42] Our system has detected an unusual rate of "
         "unsolicited mail originating from your IP address. To protect our users from spam, "
         "mail sent from your IP address has been temporarily rate limited. - gsmtp",
         False, T, Scope.PAUSE, "closing"),
    Case("gmail", C, 421, "4.4.5 Server busy, try again later.", False, T, Scope.PAUSE, "closing"),
    Case("gmail", R, 450, "4.2.1 The user you are trying to contact is receiving mail at a rate "
         "that prevents additional messages from being delivered. Please resend your message "
         "at a later time. - gsmtp", False, T, Scope.RECIPIENT, "mailbox-status"),
    Case("gmail", R, 452, "4.2.2 The email account that you tried to reach is over quota.",
         False, T, Scope.RECIPIENT, "mailbox-status"),
    Case("gmail", R, 452, "4.5.3 Your message has too many recipients.", False, T,
         Scope.RECIPIENT, "too-many-recipients"),
    Case("gmail", R, 550, "5.1.1 The email account that you tried to reach does not exist. "
         "- gsmtp", False, P, Scope.RECIPIENT, "permanent"),
    Case("gmail", D, 451, "4.3.0 Mail server temporarily rejected message. - gsmtp", False, T,
         Scope.RECIPIENT, "temporary"),
    # ---- Microsoft 365 / Exchange Online
    Case("m365", R, 451, "4.7.500 Server busy. Please try again later from [198.51.100.7]. "
         "(S77719)", False, T, Scope.PAUSE, "throttled"),
    Case("m365", R, 452, "4.5.3 Too many recipients (AS780090)", False, T, Scope.RECIPIENT,
         "too-many-recipients"),
    Case("m365", R, 550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
         "address lookup", False, P, Scope.RECIPIENT, "permanent"),
    # ---- Amazon SES (docs.aws.amazon.com/ses/latest/dg/manage-sending-quotas-errors.html)
    Case("ses", M, 454, "Throttling failure: Maximum sending rate exceeded", False, T,
         Scope.PAUSE, "throttled"),
    Case("ses", D, 454, "Throttling failure: Daily message quota exceeded", False, T,
         Scope.PAUSE, "throttled"),
    Case("ses", D, 554, "Message rejected: Email address is not verified. The following "
         "identities failed the check in region US-EAST-1: app@example.org", False, P,
         Scope.ELSEWHERE, "unverified-identity"),
    # ---- SendGrid (SMTP errors and troubleshooting)
    Case("sendgrid", R, 421, "Message from (192.0.2.1) temporarily deferred", False, T,
         Scope.PAUSE, "closing"),
    Case("sendgrid", R, 450, "too frequent connects from 198.37.147.135, please try again "
         "later.", False, T, Scope.PAUSE, "throttled"),
    Case("sendgrid", M, 550, "Unauthenticated senders not allowed", False, P, Scope.RECIPIENT,
         "permanent"),
    # ---- Mailgun (sandbox domains send to authorised recipients only)
    Case("mailgun", R, 421, "Domain sandbox1234.mailgun.org is not allowed to send: Sandbox "
         "subdomains are for test purposes only. Please add your own domain or add the "
         "address to authorized recipients in Account Settings.", False, T, Scope.ELSEWHERE,
         "sandbox"),
    # ---- greylisting (RFC 6647): the recipient's, even when every recipient gets it
    Case("greylist", R, 451, "4.7.1 Greylisted, please try again later", False, T,
         Scope.RECIPIENT, "greylisting"),
    Case("greylist", R, 451, "4.7.1 Greylisted, please try again later", True, T,
         Scope.RECIPIENT, "greylisting"),
    Case("postgrey", R, 450, "4.2.0 <a@example.net>: Recipient address rejected: Greylisted, "
         "see http://postgrey.schweikert.ch/help/example.net.html", False, T, Scope.RECIPIENT,
         "greylisting"),
    # ---- Postfix smtp-sink -r RCPT / -r DATA
    Case("smtp-sink", R, 450, "4.3.0 Error: command failed", False, T, Scope.RECIPIENT,
         "temporary"),
    Case("smtp-sink", R, 450, "4.3.0 Error: command failed", True, T, Scope.PAUSE,
         "every-recipient"),
    Case("smtp-sink", D, 450, "4.3.0 Error: command failed", True, T, Scope.PAUSE,
         "every-recipient"),
    # ---- by phase
    Case("any", M, 451, "4.3.0 Error: queue file write error", False, T, Scope.PAUSE,
         "sender-temporary"),
    Case("any", C, 454, "4.7.0 Temporary authentication failure", False, T, Scope.PAUSE,
         "connect-temporary"),
    Case("any", C, 535, "5.7.8 Authentication credentials invalid", False, T, Scope.PROVIDER,
         "connect-refused-code"),
    Case("any", C, None, "4.4.1 connection refused", False, T, Scope.PROVIDER,
         "connect-refused"),
    Case("any", D, 451, "4.3.0 Mailbox busy, try later", False, T, Scope.RECIPIENT,
         "temporary"),
    Case("any", D, 451, "4.7.1 Sending rate exceeded, try again in 10 minutes", False, T,
         Scope.PAUSE, "throttled"),
    Case("any", D, 554, "5.7.1 Message rejected as spam", False, P, Scope.RECIPIENT,
         "permanent"),
    Case("aiosmtplib", D, -1, "this is not SMTP", False, T, Scope.RECIPIENT, "unreadable"),
    Case("aiosmtplib", D, 500, "Response too long", False, T, Scope.RECIPIENT, "unreadable"),
    Case("confused", R, 252, "2.1.5 Cannot VRFY user", False, T, Scope.RECIPIENT, "unreadable"),
    Case("confused", D, 354, "End data with <CR><LF>.<CR><LF>", False, T, Scope.RECIPIENT,
         "unreadable"),
    Case("confused", C, 220, "ready", False, T, Scope.PROVIDER, "connect-refused"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.source}-{c.phase}-{c.code}-{c.rule}")
def test_rule_table(case: Case) -> None:
    assert judge(case.phase, case.code, case.text, shared=case.shared).name == case.rule
    out = reply_outcome("a@x", case.phase, case.code, case.text, shared=case.shared)
    assert isinstance(out, case.kind)
    assert isinstance(out, TempFailure | PermFailure)
    assert out.scope is case.scope
    assert out.code == case.code
    assert case.text.split()[0] in out.text  # the provider's words are kept


def test_every_rule_is_reached_and_gives_its_reason() -> None:
    assert {c.rule for c in CASES} == {r.name for r in RULES}
    assert all(len(r.why) > 20 for r in RULES)
    assert len({r.name for r in RULES}) == len(RULES)


def test_2xx_is_delivered() -> None:
    out = reply_outcome("a@x", D, 250, "2.0.0 Ok: queued as 123")
    assert out == Delivered("a@x", 250, "250 2.0.0 Ok: queued as 123")


def test_a_pause_carries_the_providers_hint() -> None:
    out = reply_outcome("a@x", D, 451, "4.3.0 try again in 2 minutes")
    assert isinstance(out, TempFailure) and out.scope is Scope.PAUSE and out.retry_after == 120


def test_shared_refusal_needs_several_readable_4xx() -> None:
    assert shared_refusal([(450, "busy"), (451, "busy")])
    assert not shared_refusal([(450, "busy")])
    assert not shared_refusal([(450, "busy"), (550, "no such user")])
    assert not shared_refusal([(450, "busy"), (-1, "garbled")])


# ------------------------------------------------------------ classify (session)


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


def test_provider_error_keeps_its_text_and_is_judged_at_connect() -> None:
    out = classify("a@x", ProviderError("421 4.7.0 Try again later, closing", 421))
    assert out == TempFailure("a@x", 421, "421 4.7.0 Try again later, closing", scope=Scope.PAUSE)
    out = classify("a@x", ProviderError("authentication failed: 535 5.7.8 bad", 535))
    assert isinstance(out, TempFailure) and out.scope is Scope.PROVIDER


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


async def test_a_refused_connection_says_refused_not_lost() -> None:
    """A real connect to a loopback port nobody listens on (aiosmtplib wraps the errno)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=free_port(), timeout=5)
    with pytest.raises(SMTPConnectError) as info:
        await client.connect()
    out = error_outcome("a@x", info.value, Phase.CONNECT)
    assert isinstance(out, TempFailure) and out.scope is Scope.PROVIDER
    assert out.text.startswith("4.4.1 connection refused"), out.text
    assert error_outcome("a@x", ConnectionRefusedError(), C).text.startswith(
        "4.4.1 connection refused"
    )
    assert "connection lost" in error_outcome("a@x", ConnectionResetError(), C).text


# ------------------------------------------------------------ final and health


def test_one_answer_is_shown_as_it_came() -> None:
    out = TempFailure("a@x", 451, "451 4.3.0 busy")
    assert final([("only", out)]) == out


def test_failover_names_each_providers_answer() -> None:
    answers: list[tuple[str, Outcome]] = [
        ("primary", TempFailure("a@x", 421, "421 4.7.0 try later", scope=Scope.PAUSE)),
        ("backup", TempFailure("a@x", 451, "451 4.3.0 busy")),
    ]
    out = final(answers)
    assert isinstance(out, TempFailure) and out.code == 451
    assert out.text == "451 4.3.0 busy (via backup; primary said 421 4.7.0 try later)"


def test_a_success_after_failover_reads_as_a_success_on_one_line() -> None:
    """#24 point 11: not "250 primary: 451 ...; backup: 250 OK" on the pages (code + reason)."""
    answers: list[tuple[str, Outcome]] = [
        ("primary", TempFailure("a@x", 451, "451 4.3.0 busy\r\n  try later", scope=Scope.PAUSE)),
        ("backup", Delivered("a@x", 250, "250 2.0.0 OK queued")),
    ]
    out = final(answers)
    assert isinstance(out, Delivered) and out.code == 250
    assert out.text.startswith("250 2.0.0 OK queued (via backup; primary said 451 4.3.0 busy")
    assert "\n" not in out.text and "\r" not in out.text


def test_no_provider_with_smtputf8_fails_for_good_with_a_clear_reason() -> None:
    out = final(
        [("sink", no_smtputf8("用户@example.net")), ("sink2", no_smtputf8("用户@example.net"))]
    )
    assert isinstance(out, PermFailure) and out.code == 553
    assert out.text.startswith("553 5.6.7 no provider offers SMTPUTF8")
    assert "sink, sink2" in out.text


def test_not_final_while_a_skipped_provider_may_still_carry_it() -> None:
    out = final([("sink", no_smtputf8("ü@x"))], waiting="utf8: paused", wait=30.0)
    assert isinstance(out, TempFailure) and out.retry_after == 30.0
    assert "no provider offers SMTPUTF8" in out.text and "utf8: paused" in out.text


def test_smtputf8_then_a_real_answer_keeps_the_real_answer() -> None:
    out = final([("sink", no_smtputf8("ü@x")), ("up", TempFailure("ü@x", None, "4.4.1 refused"))])
    assert isinstance(out, TempFailure)
    assert out.text.startswith("4.4.1 refused (via up; sink said 553 5.6.7"), out.text


@pytest.mark.parametrize(
    ("outcomes", "want"),
    [
        ([Delivered("a", 250, "ok")], None),
        ([TempFailure("a", 451, "4.7.1 greylisted")], None),
        ([TempFailure("a", None, "refused", scope=Scope.PROVIDER)], (False, None)),
        (
            [TempFailure("a", None, "x", scope=Scope.PROVIDER), TempFailure("b", 451, "busy")],
            None,
        ),
        (
            [
                Delivered("a", 250, "ok"),
                TempFailure("b", 451, "try again in 1 minute", 60.0, Scope.PAUSE),
            ],
            (True, 60.0),
        ),
        ([no_smtputf8("ü@x")], None),
        ([], None),
    ],
)
def test_health_verdict(outcomes: list[Outcome], want: tuple[bool, float | None] | None) -> None:
    got = health_verdict(outcomes)
    if want is None:
        assert got is None
    else:
        assert got is not None and (got.pause, got.retry_after) == want
