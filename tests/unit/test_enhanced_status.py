"""Enhanced status codes (relay.enhanced_status): the one reader of RFC 3463 codes, and its uses."""

from __future__ import annotations

import pytest

from relay.enhanced_status import address_status, enhanced_status, reply_status
from relay.model import PermFailure, Scope
from relay.outbound.replies import hard_bounce


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("550 5.1.1 <x@example.net>: Recipient address rejected", "5.1.1"),
        ("5.7.1 relaying denied", "5.7.1"),
        ("452 4.5.3 too many recipients", "4.5.3"),
        ("250 2.0.0 Ok: queued as 4Xyz", "2.0.0"),
        ("smtp; 550 5.1.10 RecipientNotFound", "5.1.10"),  # Microsoft's three-digit detail
        ("550 mailbox unavailable", ""),
        ("550 see 15.1.1.1 for details", ""),  # not a whole word
        ("3.1.1 is no class", ""),
        ("", ""),
    ],
)
def test_enhanced_status(text: str, status: str) -> None:
    assert enhanced_status(text) == status


@pytest.mark.parametrize(
    ("code", "reply", "status"),
    [
        (550, "5.7.1 relaying denied", "5.7.1"),
        (550, "mailbox unavailable", "5.0.0"),
        (452, "too many recipients", "4.0.0"),
        (None, "4.4.0 no provider is available", "4.4.0"),
        (None, "no answer at all", "4.0.0"),
    ],
)
def test_reply_status_is_never_empty(code: int | None, reply: str, status: str) -> None:
    """What a DSN reports (relay.notify.dsn): the reply's own code, else one of its class."""
    assert reply_status(code, reply) == status


@pytest.mark.parametrize(
    ("status", "about_the_address"),
    [
        ("5.1.1", True),
        ("5.1.2", True),
        ("5.1.10", True),
        ("5.2.1", True),
        ("5.7.1", False),  # policy
        ("5.6.0", False),  # content
        ("5.2.2", False),  # mailbox full
        ("4.1.1", False),  # a temporary failure never is
        ("", False),
    ],
)
def test_address_status(status: str, about_the_address: bool) -> None:
    assert address_status(status) is about_the_address


@pytest.mark.parametrize(
    ("code", "text", "hard"),
    [
        (550, "550 5.1.1 <gone@example.net>: User unknown", True),
        (550, "5.1.10 RecipientNotFound", True),
        (550, "550 5.7.1 Message rejected as spam (user unknown)", False),  # the code decides
        (550, "550 user unknown", True),  # no code: the words decide
        (552, "552 no such user", False),
    ],
)
def test_hard_bounce_reads_the_status_here(code: int, text: str, hard: bool) -> None:
    outcome = PermFailure("gone@example.net", code, text, scope=Scope.RECIPIENT)
    assert hard_bounce(outcome) is hard
