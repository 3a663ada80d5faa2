"""Where a test message stands: the view the provider page polls until it settles.

Sending one is ``relay.operations.testmail.send_test_message``: a real message
through the spool, pinned to one provider. This module only reads it back.
"""

from __future__ import annotations

from typing import Any

from relay.errors import UnknownMessage
from relay.model import TERMINAL, RecipientStatus
from relay.store.spool import Spool

__all__ = ["is_settled", "test_message_view"]


def is_settled(status: RecipientStatus, attempts: int) -> bool:
    """Whether the page may stop polling: a final state, or a first temporary answer."""
    return status in TERMINAL or (status is RecipientStatus.DEFERRED and attempts > 0)


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
