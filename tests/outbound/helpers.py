"""Small helpers shared by the provider tests."""

from __future__ import annotations

from relay.model import QueueEntry, RecipientStatus
from relay.store.spool import Spool

SENDER = "app@example.org"


def message(subject: str = "test", *, headers: str = "", sender: str = SENDER) -> bytes:
    return (
        f"From: App <{sender}>\r\nTo: someone@example.net\r\nSubject: {subject}\r\n{headers}"
        "Message-ID: <m1@example.org>\r\n\r\nhello\r\n"
    ).encode()


def queue_id_of(reply: str) -> str:
    return reply.rsplit(" ", 1)[-1]


async def entries(spool: Spool, queue_id: str) -> list[QueueEntry]:
    return await spool.list_queue(search=queue_id)


async def sent(spool: Spool, queue_id: str) -> list[QueueEntry]:
    found = await entries(spool, queue_id)
    return found if found and all(e.status is RecipientStatus.SENT for e in found) else []


def strip_received(data: bytes) -> bytes:
    """Remove the Received header Sluice prepends (one field, folded over lines)."""
    assert data.startswith(b"Received: ")
    lines = data.split(b"\r\n")
    i = 1
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])
