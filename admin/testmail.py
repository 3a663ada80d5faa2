"""Send test message: a real message to an address the operator types, through one provider.

It goes the way all mail goes: built here, stored by ``Spool.enqueue`` like a
message accepted over SMTP, and pinned to the chosen provider by the
``X-Sluice-Provider`` header that routing already honours (and removes before
sending; see ``relay.outbound.routing``). Nothing bypasses the spool, so the
message shows in the queue and the log, and its recipient's status and last
reply are the provider's final answer, which the page polls for.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from admin.backend import Backend
from relay.errors import SluiceError, UnknownMessage
from relay.message import PROVIDER_HEADER
from relay.model import TERMINAL, RecipientStatus
from relay.store.spool import NewMessage, Spool, new_queue_id

__all__ = [
    "TestMessageError",
    "is_settled",
    "parse_address",
    "send_test_message",
    "test_message_view",
]

#: RFC 5321 § 4.5.3.1.3: a path is at most 256 octets, so an address 254.
_ADDRESS_MAX = 254


class TestMessageError(SluiceError, ValueError):
    """The request cannot be sent; ``status`` is the HTTP status to answer with."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.status = status


def parse_address(text: str) -> str:
    """One plain ``local@domain`` address, or ``TestMessageError``.

    Display names, lists and line breaks are refused: the value becomes an
    envelope recipient and a header field.
    """
    value = text.strip()
    if not value or len(value) > _ADDRESS_MAX or any(c in value for c in '\r\n<>,; \t"()'):
        raise TestMessageError("enter one e-mail address, such as someone@example.org")
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "." not in domain.strip("."):
        raise TestMessageError("enter one e-mail address, such as someone@example.org")
    return value


def is_settled(status: RecipientStatus, attempts: int) -> bool:
    """Whether the page may stop polling: a final state, or a first temporary answer."""
    return status in TERMINAL or (status is RecipientStatus.DEFERRED and attempts > 0)


async def send_test_message(backend: Backend, provider_id: str, to: str) -> str:
    """Queue a test message to ``to`` through ``provider_id``; returns its queue ID.

    Raises:
        TestMessageError: no such provider (404), it is disabled (409: routing
            would not use it), or ``to`` is not one address (400).
    """
    config = backend.snapshot().config
    try:
        provider = config.provider(provider_id)
    except KeyError:
        raise TestMessageError(f"no provider {provider_id!r}", 404) from None
    if not provider.enabled:
        raise TestMessageError(f"provider {provider_id!r} is disabled; enable it first", 409)
    rcpt = parse_address(to)
    hostname = backend.hostname or "localhost"
    sender = provider.send_from or f"sluice@{hostname}"
    now = backend.clock()
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    label = f"{provider.id} ({provider.caption})" if provider.caption else provider.id

    msg = EmailMessage(policy=SMTP)  # CRLF line ends, as on the wire
    msg["From"] = Address("Sluice test", addr_spec=sender)
    msg["To"] = rcpt
    msg["Subject"] = f"Sluice test message via {provider.id}"
    msg["Date"] = email.utils.format_datetime(when)
    msg["Message-ID"] = email.utils.make_msgid("sluice-test", domain=hostname)
    msg[PROVIDER_HEADER] = provider.id
    msg.set_content(
        f"This is a test message from the Sluice admin page on {hostname},\n"
        f"sent through provider {label} at {when:%Y-%m-%d %H:%M:%S} UTC.\n"
        "If you can read it, this provider delivers mail.\n"
    )
    data = msg.as_bytes()
    return await backend.spool.enqueue(
        NewMessage(
            queue_id=new_queue_id(now),
            sender=sender,
            recipients=[rcpt],
            data=data,
            subject=str(msg["Subject"]),
            received_at=now,
            client="admin",
            crlf_only=b"\n" not in data.replace(b"\r\n", b""),
        )
    )


async def test_message_view(spool: Spool, queue_id: str) -> dict[str, Any] | None:
    """Where a test message stands, for the page and ``/api/test-messages/{id}``."""
    try:
        detail = await spool.get(queue_id)
    except UnknownMessage:
        return None
    if not detail.recipients:
        return None
    r = detail.recipients[0]
    last = detail.attempts[-1] if detail.attempts else None
    return {
        "queue_id": detail.queue_id,
        "to": r.email,
        "sender": detail.sender,
        "provider": r.provider or (last.provider if last is not None else None),
        "status": r.status.value,
        "attempts": r.attempts,
        "reply": r.reason or "",
        "code": last.code if last is not None else None,
        "next_attempt_at": r.next_attempt_at,
        "settled": is_settled(r.status, r.attempts),
    }
