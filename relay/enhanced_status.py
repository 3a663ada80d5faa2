"""Enhanced mail system status codes (RFC 3463): ``5.1.1``, found in a reply and reported.

One home for the word, used on every side: the scheduler logs the status a
provider's reply carries (``enhanced_status``), the reply rules ask whether a
refusal is about the address (``address_status``), the DSN builder reports a
status for every failed recipient, one of its class when the server gave
none (``reply_status``), and the bounce reader takes the status a remote
MTA wrote into its report (``enhanced_status`` again).

The code is ``class.subject.detail``: the class is 2 (success), 4
(persistent transient failure) or 5 (permanent failure); subject and detail
are 1 to 3 digits each (RFC 3463 § 2). It is found anywhere in a reply as
a whole word, which is how Postfix, Exchange, Gmail and SES all write it
(``550 5.1.1 <x@y>: Recipient address rejected``) and how the stdlib and
flufl.bounce leave it: neither has a parser for it, hence this one regex.
"""

from __future__ import annotations

import re

__all__ = ["ENHANCED_STATUS", "address_status", "enhanced_status", "reply_status"]

#: an RFC 3463 code as a whole word; its three parts are the groups
ENHANCED_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")

# X.1.x is about the address itself (5.1.1 bad mailbox, 5.1.2 bad system,
# 5.1.3 bad syntax, 5.1.6 moved, 5.1.10 Microsoft's RecipientNotFound), 5.2.1
# a disabled mailbox. Policy (5.7.x), content (5.6.x) and capacity refusals
# say nothing about whether the address exists.
_ADDRESS = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})


def enhanced_status(text: str) -> str:
    """The first enhanced status code in ``text`` (``550 5.1.1 ...`` -> ``5.1.1``), or ''."""
    match = ENHANCED_STATUS.search(text)
    return ".".join(match.groups()) if match else ""


def reply_status(code: int | None, text: str) -> str:
    """The status to report for a reply: its own code, else ``X.0.0`` of its reply class.

    ``code`` is the SMTP reply code, ``None`` when no server answered (no
    provider, or the message expired while waiting): then the status is
    ``4.0.0``, "other or undefined status" of a recipient still waiting.
    Never empty, as a DSN's ``Status`` field must not be (RFC 3464 § 2.3.4).
    """
    if status := enhanced_status(text):
        return status
    if code is not None and 400 <= code < 600:
        return f"{code // 100}.0.0"
    return "4.0.0"


def address_status(status: str) -> bool:
    """Whether ``status`` (from ``enhanced_status``) says the address itself is bad."""
    return status in _ADDRESS
