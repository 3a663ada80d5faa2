"""Read a DSN back with the stdlib ``email`` package (what a MUA does), typed for tests."""

from __future__ import annotations

import email
import email.policy
from dataclasses import dataclass
from email.message import EmailMessage, Message

__all__ = ["Report", "read_report"]


@dataclass(frozen=True)
class Report:
    message: EmailMessage
    #: the content types of the three parts, in order
    types: list[str]
    human: str
    #: the per-message block, then one block per recipient (RFC 3464 § 2.1)
    blocks: list[Message]
    #: the returned header, decoded from its transfer encoding
    returned: bytes


def read_report(raw: bytes) -> Report:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    parts = list(msg.iter_parts())
    assert len(parts) == 3, [p.get_content_type() for p in parts]
    human, status, headers = parts
    assert isinstance(human, EmailMessage)
    blocks = status.get_payload()
    assert isinstance(blocks, list) and all(isinstance(b, Message) for b in blocks)
    returned = headers.get_payload(decode=True)
    assert isinstance(returned, bytes)
    return Report(
        msg,
        [p.get_content_type() for p in parts],
        str(human.get_content()),
        [b for b in blocks if isinstance(b, Message)],
        returned,
    )
