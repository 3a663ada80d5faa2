"""Bounces about mail Sluice really sent: the stored sample DSNs made to answer a delivered message.

A DSN counts only when it is about mail Sluice sent to the address it names
(issue #23, point 1). The sample reports in ``fixtures/`` name queue IDs and
a VERP address of no spool; ``delivered`` sends a message through a real
spool (enqueued, claimed, finished with a provider's 250, as the scheduler
does) and ``about`` rewrites a sample so that its returned ``Received:``
line, and its VERP address if given, name that message.
"""

from __future__ import annotations

import re
import time

from relay.model import AttemptStatus, RecipientStatus
from relay.store.spool import Finish, NewMessage, Spool, new_queue_id

__all__ = ["about", "delivered"]

_RECEIVED_ID = re.compile(rb"(\(Sluice\) with ESMTP id )[0-9A-F]{16}")
_SAMPLE_VERP = re.compile(rb"bounces\+[0-9A-Fa-f]{16}-\d+(?:-[0-9a-f]{16})?@sluice\.example")


async def delivered(spool: Spool, rcpt: str) -> tuple[str, int]:
    """(queue ID, recipient id) of a message to ``rcpt`` that a provider took (250)."""
    now = time.time()
    queue_id = new_queue_id(now)
    data = f"From: app@example.org\r\nTo: {rcpt}\r\nSubject: hello\r\n\r\nhi\r\n".encode()
    await spool.enqueue(NewMessage(queue_id, "app@example.org", [rcpt], data, "hello", now))
    (claim,) = [c for c in await spool.claim_due(100, lease=60) if c.queue_id == queue_id]
    ((rid, _address),) = claim.recipients.items()
    await spool.finish(
        [
            Finish(
                rid,
                claim.attempt_ids[rid],
                RecipientStatus.SENT,
                AttemptStatus.SUCCESS,
                None,
                250,
                "250 2.0.0 Ok: queued",
                "p",
            )
        ]
    )
    return queue_id, rid


def about(sample: bytes, queue_id: str, verp: str | None = None) -> bytes:
    """``sample`` with its Sluice ``Received:`` id (and its VERP address) made ``queue_id``'s."""
    out = _RECEIVED_ID.sub(lambda m: m.group(1) + queue_id.encode(), sample)
    assert out != sample or queue_id.encode() in sample, "the sample has no Sluice Received line"
    if verp is not None:
        out = _SAMPLE_VERP.sub(verp.encode(), out)
    return out
