"""Webhook events: their names, their JSON body, and the signature (pure).

An event is stored in the spool's outbox (one row per endpoint that wants it)
in the same transaction as the outcome it reports, and posted later by
``relay.notify.webhooks``; this module only says what the body, the outbox
rows and the signature are, so the sender, the tests and a receiver all agree
on them. Whoever knows the configuration (the scheduler, the bounce poller,
the admin, the CLI) passes the endpoints down to the store, which builds the
rows here inside the transaction that makes the change: the store never reads
the configuration, and a change is never recorded without its events.

The signature is Stripe's scheme: ``X-Sluice-Signature: t=TIMESTAMP,v1=HEX``,
where HEX is HMAC-SHA256 over ``TIMESTAMP.BODY`` with the endpoint's secret.
The timestamp lets a receiver refuse a replay older than a few minutes; the
event ID (``X-Sluice-Event-Id``, and ``id`` in the body) lets it drop the
duplicates that at-least-once delivery may bring.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

# EventType is re-exported: its home is relay.model, beside the statuses it corresponds to.
from relay.model import STATUS_WORDS, EventType, RecipientStatus

__all__ = [
    "OUTCOME_EVENTS",
    "SIGNATURE_HEADER",
    "Affected",
    "Endpoint",
    "EventType",
    "OutboxEvent",
    "bounce_events",
    "control_events",
    "event_body",
    "outbox_rows",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Sluice-Signature"


#: the events of the outcomes the scheduler records: the rows of ``STATUS_WORDS``
#: with all three words (a recipient status, a log row and an event)
OUTCOME_EVENTS = frozenset(
    row.event
    for row in STATUS_WORDS
    if row.event is not None and row.attempt is not None and row.recipient is not None
)


def event_body(event_id: str, kind: EventType, created_at: float, data: dict[str, Any]) -> str:
    """The JSON body posted for one event (compact, keys sorted: stable bytes to sign)."""
    return json.dumps(
        {"id": event_id, "type": kind.value, "created_at": created_at, "data": data},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )


class Endpoint(Protocol):
    """What the rows need of an endpoint (``relay.config.WebhookSettings`` is one)."""

    @property
    def url(self) -> str: ...

    @property
    def events(self) -> Sequence[EventType]: ...


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event for one endpoint, to store with the change it reports."""

    endpoint: str
    event_id: str
    event: str
    #: the message it is about ('' for provider events): events go out in order
    queue_id: str
    body: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Affected:
    """One recipient an operator action (or a ``hold.rules`` rule) changed."""

    recipient_id: int
    queue_id: str
    recipient: str


def outbox_rows(
    endpoints: Iterable[Endpoint],
    kind: EventType,
    event_id: str,
    queue_id: str,
    data: dict[str, Any],
    now: float,
) -> list[OutboxEvent]:
    """One row per endpoint whose ``events`` list has ``kind``; none when no endpoint wants it."""
    wanted = [e.url for e in endpoints if kind in e.events]
    if not wanted:
        return []
    body = event_body(event_id, kind, now, data)
    return [OutboxEvent(url, event_id, kind.value, queue_id, body, now) for url in wanted]


def control_events(
    endpoints: Sequence[Endpoint],
    kind: EventType,
    affected: Iterable[Affected],
    *,
    status: str,
    reason: str,
    actor: str,
    now: float,
) -> list[OutboxEvent]:
    """``held`` or ``released`` rows: one event per recipient the action changed.

    ``reason`` is what the queue shows for the recipient ("held by cli:ann:
    maintenance"); ``actor`` who did it (an admin user, ``api``, ``cli:$USER``,
    or ``hold.rules``).
    """
    out: list[OutboxEvent] = []
    for a in affected:
        # The recipient row and the moment name the event: a hold, a release
        # and a second hold of one recipient are three events.
        event_id = f"{a.queue_id}.{kind.value}.{a.recipient_id}.{int(now * 1000)}"
        data: dict[str, Any] = {
            "queue_id": a.queue_id,
            "recipient": a.recipient,
            "status": status,
            "reason": reason,
            "actor": actor,
        }
        out.extend(outbox_rows(endpoints, kind, event_id, a.queue_id, data, now))
    return out


def bounce_events(
    endpoints: Sequence[Endpoint],
    *,
    bounce_id: int,
    queue_id: str,
    recipient: str,
    kind: str,
    status: str,
    diagnostic: str,
    source: str,
    now: float,
    suppressed: str | None = None,
    suppressed_until: float | None = None,
    suppressed_scope: str = "",
) -> list[OutboxEvent]:
    """A ``bounced`` row per endpoint, and ``suppressed`` ones when the bounce crossed
    the threshold (``suppressed`` is then the entry's reason, ``suppressed_scope``
    its stream: '' for every stream).

    ``source`` is where the bounce came from: ``smtp`` (a provider refused
    the address) or ``dsn`` (a report read from the bounce mailbox).
    """
    event_id = f"bounce.{bounce_id}"  # the stored bounce: recorded once, reported once
    data: dict[str, Any] = {
        "queue_id": queue_id,
        "recipient": recipient,
        "kind": kind,
        "status": status,
        "diagnostic": diagnostic,
        "source": source,
    }
    out = outbox_rows(endpoints, EventType.BOUNCED, event_id, queue_id, data, now)
    if suppressed is not None:
        entry: dict[str, Any] = {
            "queue_id": queue_id,
            "recipient": recipient,
            "status": RecipientStatus.SUPPRESSED.value,
            "source": "bounce",
            "reason": suppressed,
            "scope": suppressed_scope,
            "expires_at": suppressed_until,
        }
        out += outbox_rows(
            endpoints, EventType.SUPPRESSED, f"{event_id}.suppressed", queue_id, entry, now
        )
    return out


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Sluice-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: bytes, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and is no older than ``tolerance``."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))
