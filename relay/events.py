"""Webhook events: their names, their JSON body, and the signature (pure).

An event is stored in the spool's outbox (one row per endpoint that wants it)
in the same transaction as the outcome it reports, and posted later by
``relay.notify.webhooks``; this module only says what the body and the
signature are, so the sender, the tests and a receiver all agree on them.

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
from enum import StrEnum
from typing import Any

__all__ = [
    "OUTCOME_EVENTS",
    "SIGNATURE_HEADER",
    "EventType",
    "event_body",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Sluice-Signature"


class EventType(StrEnum):
    """What an event reports; an endpoint's ``events`` list filters on these names."""

    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"
    #: a provider's health changed (ok, error, cooldown, paused ...)
    PROVIDER_STATE = "provider_state"
    # Named here for the branches that report them (bounce processing,
    # suppression, operator holds): adding one is one line.
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"
    HELD = "held"
    RELEASED = "released"


#: the recipient states the scheduler records that make an event
OUTCOME_EVENTS = frozenset(
    {
        EventType.SENT,
        EventType.DEFERRED,
        EventType.FAILED,
        EventType.EXPIRED,
        EventType.SUPPRESSED,
    }
)


def event_body(event_id: str, kind: EventType, created_at: float, data: dict[str, Any]) -> str:
    """The JSON body posted for one event (compact, keys sorted: stable bytes to sign)."""
    return json.dumps(
        {"id": event_id, "type": kind.value, "created_at": created_at, "data": data},
        separators=(",", ":"),
        sort_keys=True,
        ensure_ascii=False,
    )


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
