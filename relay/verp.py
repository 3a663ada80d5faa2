"""VERP: a return path per recipient, so a bounce says exactly whom it is about.

With ``bounces.verp`` on, the envelope sender of each recipient's
transaction is ``LOCAL+QUEUEID-RECIPIENTID-MAC@DOMAIN`` for a bounce address
``LOCAL@DOMAIN`` (``+`` is the usual sub-address delimiter: Postfix's
``recipient_delimiter``, Gmail, Microsoft 365 plus addressing). The bounce
comes back to that address, and the token names the queue entry and the
recipient row, whatever the remote MTA wrote in its report.

The bounce address is the return path of every message Sluice relays, so
anyone who ever got mail from it knows it, and a token anyone can write
would let anyone put any address on the suppression list. The ``MAC`` is a
truncated HMAC-SHA256 over the queue ID and the recipient id, keyed by a
random secret kept in the spool (``Suppressions.verp_key``), as SRS and
Postfix's VERP users sign their return paths: only Sluice can make a token
that ``parse`` accepts. The whole token is lowercase hex, so an MTA that
lowercases local parts (some do) returns it intact, and ``parse`` reads it
whatever its case. 64 bits of MAC keep the address short (the local part
stays well under RFC 5321's 64 octets) and a forger's chance nil.

A token without a MAC (``LOCAL+QUEUEID-RECIPIENTID``, written before the MAC
existed) or with one that does not verify is not accepted: ``token_of``
still finds it, so the poller can say why such a bounce was not matched.

(``hmac`` and ``hashlib`` from the standard library are all it takes; SRS
libraries such as ``pysrs`` rewrite forwarded senders, a different job.)
"""

from __future__ import annotations

import hashlib
import hmac
import re

from relay.address import domain_of

__all__ = ["MAC_CHARS", "parse", "token_of", "verp_address"]

#: hex characters of the MAC in a token (64 bits)
MAC_CHARS = 16

_TOKEN = re.compile(r"^(?P<qid>[0-9a-f]{16})-(?P<rid>\d{1,18})-(?P<mac>[0-9a-f]{16})$")


def _mac(key: bytes, queue_id: str, recipient_id: int) -> str:
    """The token's MAC: what only the holder of ``key`` can write."""
    text = f"{queue_id.upper()}-{recipient_id}".encode("ascii")
    return hmac.new(key, text, hashlib.sha256).hexdigest()[:MAC_CHARS]


def verp_address(bounce_address: str, queue_id: str, recipient_id: int, key: bytes) -> str:
    """The return path for one recipient of one message, signed with ``key``."""
    local, _, domain = bounce_address.rpartition("@")
    mac = _mac(key, queue_id, recipient_id)
    return f"{local}+{queue_id.lower()}-{recipient_id}-{mac}@{domain}"


def token_of(address: str, bounce_address: str) -> str | None:
    """The text after ``LOCAL+`` when ``address`` is a sub-address of ``bounce_address``.

    Whether or not it is a valid token: a bounce sent to one that does not
    verify is forged, or answers mail sent before the MAC existed.
    """
    local = address.strip().strip("<>").rpartition("@")[0]
    base_local = bounce_address.rpartition("@")[0]
    if domain_of(address) != domain_of(bounce_address):
        return None
    prefix = base_local.lower() + "+"
    if not local.lower().startswith(prefix) or len(local) == len(prefix):
        return None
    return local[len(prefix) :]


def parse(address: str, bounce_address: str, key: bytes) -> tuple[str, int] | None:
    """(queue ID, recipient id) from a VERP address of ``bounce_address`` signed with ``key``.

    None when ``address`` is no VERP address, or its MAC is missing or wrong.
    """
    token = token_of(address, bounce_address)
    if token is None:
        return None
    match = _TOKEN.match(token.lower())
    if match is None:
        return None
    queue_id, rid = match.group("qid").upper(), int(match.group("rid"))
    if not hmac.compare_digest(match.group("mac"), _mac(key, queue_id, rid)):
        return None
    return queue_id, rid
