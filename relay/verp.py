"""VERP: a return path per recipient, so a bounce says exactly whom it is about.

With ``bounces.verp`` on, the envelope sender of each recipient's
transaction is ``LOCAL+QUEUEID-RECIPIENTID@DOMAIN`` for a bounce address
``LOCAL@DOMAIN`` (``+`` is the usual sub-address delimiter: Postfix's
``recipient_delimiter``, Gmail, Microsoft 365 plus addressing). The bounce
comes back to that address, and the token names the queue entry and the
recipient row, whatever the remote MTA wrote in its report.
"""

from __future__ import annotations

import re

from relay.address import domain_of

__all__ = ["parse", "verp_address"]

_TOKEN = re.compile(r"^(?P<qid>[0-9A-F]{16})-(?P<rid>\d{1,18})$")


def verp_address(bounce_address: str, queue_id: str, recipient_id: int) -> str:
    """The return path for one recipient of one message."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{queue_id}-{recipient_id}@{domain}"


def parse(address: str, bounce_address: str) -> tuple[str, int] | None:
    """(queue ID, recipient id) from a VERP address of ``bounce_address``, else None."""
    local = address.strip().strip("<>").rpartition("@")[0]
    base_local = bounce_address.rpartition("@")[0]
    if domain_of(address) != domain_of(bounce_address):
        return None
    prefix = base_local.lower() + "+"
    if not local.lower().startswith(prefix):
        return None
    match = _TOKEN.match(local[len(prefix) :].upper())
    if match is None:
        return None
    return match.group("qid"), int(match.group("rid"))
