"""Send test message: a real message to an address the operator types, through one provider.

It goes the way all mail goes: built here, stored by ``Spool.enqueue`` like a
message accepted over SMTP, and pinned to the chosen provider by the
``X-Sluice-Provider`` header that routing already honours (and removes before
sending; see ``relay.outbound.routing``). Nothing bypasses the spool, so the
message shows in the queue and the log, and its recipient's status and last
reply are the provider's final answer.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

from relay.address import address_problem
from relay.config import Config
from relay.message import PROVIDER_HEADER
from relay.operations.actor import Actor, Refusal, Refused
from relay.received import received_header
from relay.store.spool import NewMessage, Spool, stored_under_fresh_id
from relay.wording import when

__all__ = ["SendTest", "SentTest", "parse_recipient", "send_test_message"]


@dataclass(frozen=True, slots=True)
class SendTest:
    """A test message to send: to whom, through which provider."""

    provider: str
    to: str


@dataclass(frozen=True, slots=True)
class SentTest:
    """A test message in the queue: its queue ID, provider and recipient."""

    queue_id: str
    provider: str
    to: str


def parse_recipient(text: str) -> str:
    """One plain mailbox (``relay.address``), or ``Refused``.

    Display names and lists are refused with the rest: the value becomes an
    envelope recipient and a header field.
    """
    value = text.strip()
    problem = address_problem(value) if value else "empty address"
    if problem is not None:
        raise Refused(f"enter one e-mail address, such as someone@example.org ({problem})")
    return value


async def send_test_message(
    spool: Spool,
    config: Config,
    request: SendTest,
    actor: Actor,
    *,
    hostname: str,
    now: float,
) -> SentTest:
    """Queue a test message to ``request.to`` through ``request.provider``.

    Raises:
        Refused: no such provider (``NOT_FOUND``), it is disabled (``CONFLICT``:
            routing would not use it), or ``to`` is not one address.
    """
    try:
        provider = config.provider(request.provider)
    except KeyError:
        raise Refused(f"no provider {request.provider!r}", Refusal.NOT_FOUND) from None
    if not provider.enabled:
        raise Refused(
            f"provider {request.provider!r} is disabled; enable it first", Refusal.CONFLICT
        )
    rcpt = parse_recipient(request.to)
    hostname = hostname or "localhost"
    sender = provider.send_from or f"sluice@{hostname}"
    label = f"{provider.id} ({provider.caption})" if provider.caption else provider.id

    msg = EmailMessage(policy=SMTP)  # CRLF line ends, as on the wire
    msg["From"] = Address("Sluice test", addr_spec=sender)
    msg["To"] = rcpt
    msg["Subject"] = f"Sluice test message via {provider.id}"
    msg["Date"] = email.utils.format_datetime(dt.datetime.fromtimestamp(now, dt.UTC))
    msg["Message-ID"] = email.utils.make_msgid("sluice-test", domain=hostname)
    msg[PROVIDER_HEADER] = provider.id
    msg.set_content(
        f"This is a test message from Sluice on {hostname} (sent by {actor.audit}),\n"
        f"sent through provider {label} at {when(now)}.\n"
        "If you can read it, this provider delivers mail.\n"
    )
    content = msg.as_bytes()

    def make(queue_id: str) -> NewMessage:
        # Sluice's own trace line, as on every message it spools (the listener's,
        # sendmail's, a DSN's), so a bounce of the test message is matched to it
        # without VERP (``relay.received``).
        trace = received_header(
            hostname=hostname, queue_id=queue_id, protocol="local", recipients=[rcpt], now=now
        )
        data = trace + content
        return NewMessage(
            queue_id=queue_id,
            sender=sender,
            recipients=[rcpt],
            data=data,
            subject=str(msg["Subject"]),
            received_at=now,
            client=actor.kind.value,
            crlf_only=b"\n" not in data.replace(b"\r\n", b""),
        )

    _, queue_id = await stored_under_fresh_id(make, spool.enqueue, now)
    return SentTest(queue_id, provider.id, rcpt)
