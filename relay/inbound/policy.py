"""Sending policy per user and per client network (``smtp.policies``).

An application container with a user and password, or a LAN segment, may
be allowed some envelope senders and From domains only, a message rate, a
size below the listener's, and a default route (decke/smtprelay's
``allowed_sender``, maddy's ``authorize_sender``, Postfix's
``reject_sender_login_mismatch`` and anvil's message rate). The listener
asks this module at MAIL and at the end of DATA; everything here is a pure
function of the policy and what the client sent, except the rate, which is
a count kept in one place for every accepting process (``WindowCounter``
in the daemon; an accept worker asks it over its channel, ``RateGate``).

Matching: the first entry whose every given condition holds applies
(``users``: the name the session authenticated as; ``networks``: the
client's address). A session no entry matches is not restricted.

Replies, by what Postfix and maddy answer:

* MAIL FROM not allowed: ``550 5.7.1`` (Postfix's sender login mismatch);
* From header domain not allowed: ``550 5.7.1`` after the final dot;
* larger than the policy's size: ``552 5.3.4`` at MAIL (``SIZE=``) or after DATA;
* over the rate: ``450 4.7.1`` at MAIL (Postfix's
  ``smtpd_client_message_rate_limit``), counted per user when the session
  authenticated, else per client address, across all accept workers.

Why no library: the matching is a dozen lines over the config's types, and
the rate is a sliding window of timestamps (exactly "at most N in any
``per`` seconds", which a test can check), not a token bucket's refill.
"""

from __future__ import annotations

import email.utils
import ipaddress
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.address import NULL_PATH, domain_of
from relay.config import Rate, SendingPolicy
from relay.message import PROVIDER_HEADER, HeaderBlock, stream_of

__all__ = [
    "R_FROM_NOT_ALLOWED",
    "R_NO_FROM",
    "R_RATE",
    "R_SENDER_NOT_ALLOWED",
    "R_TOO_BIG",
    "STREAM_HEADER",
    "LocalRates",
    "Match",
    "RateGate",
    "WindowCounter",
    "client_address",
    "default_headers",
    "from_refusal",
    "mail_size",
    "policy_for",
    "rate_key",
    "sender_allowed",
]

R_SENDER_NOT_ALLOWED = "550 5.7.1 Sender address not allowed for this user/network"
R_FROM_NOT_ALLOWED = "550 5.7.1 From header domain {domain} not allowed for this user/network"
R_NO_FROM = "550 5.7.1 Message has no From header address; this user/network must send one"
R_TOO_BIG = "552 5.3.4 Message size exceeds the limit for this user/network ({limit} bytes)"
R_RATE = (
    "450 4.7.1 Message rate limit exceeded for this user/network ({count} per {per}); "
    "try again later"
)

#: the header a policy's ``stream`` is written as (the first of ``suppression.stream_headers``)
STREAM_HEADER = "X-Sluice-Stream"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(ip: str) -> Address | None:
    """The client's address as the networks compare it (an IPv4-mapped IPv6 one as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class Match:
    """The policy that applies to a session: its place in ``smtp.policies`` and itself."""

    index: int
    policy: SendingPolicy


def policy_for(policies: Sequence[SendingPolicy], ip: str, user: str | None) -> Match | None:
    """The first policy whose every condition holds for this client, or ``None``."""
    addr: Address | None = None
    for index, policy in enumerate(policies):
        if policy.users and (user is None or user not in policy.users):
            continue
        if policy.networks:
            if addr is None:
                addr = client_address(ip)
            if addr is None or not any(addr in net for net in policy.networks):
                continue
        return Match(index, policy)
    return None


def sender_allowed(policy: SendingPolicy, sender: str) -> bool:
    """Whether the envelope sender is one of ``allowed_senders`` (any, when none is given).

    Entries are ``<>`` (the null sender), ``user@domain`` (that address) and
    ``@domain`` (any address there; ``*@domain`` is read the same);
    addresses compare without regard to case, as Postfix's lookup tables do.
    """
    allowed = policy.allowed_senders
    if not allowed:
        return True
    if sender in (NULL_PATH, ""):
        return NULL_PATH in allowed
    domain = domain_of(sender)
    local = sender.strip().strip("<>").rpartition("@")[0].lower()
    return f"@{domain}" in allowed or f"{local}@{domain}" in allowed


def _domain_allowed(domain: str, allowed: Sequence[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            if domain == pattern[2:] or domain.endswith(pattern[1:]):
                return True
        elif domain == pattern:
            return True
    return False


def from_refusal(policy: SendingPolicy, head: HeaderBlock) -> str | None:
    """The reply refusing the message for its From header, or ``None`` when it may go.

    Every address of the From field must have an allowed domain; a message
    with none is refused while the policy names domains (there is nothing
    to check, and maddy's ``authorize_sender`` refuses it too).
    """
    allowed = policy.allowed_from_domains
    if not allowed:
        return None
    value = head.value("From")
    addresses = [a for _n, a in email.utils.getaddresses([value or ""]) if a]
    if not addresses:
        return R_NO_FROM
    for address in addresses:
        domain = domain_of(address)
        if not _domain_allowed(domain, allowed):
            return R_FROM_NOT_ALLOWED.format(domain=domain or "(none)")
    return None


def mail_size(options: Sequence[str]) -> int | None:
    """The ``SIZE=`` the client declared on MAIL FROM (RFC 1870), or ``None``."""
    for option in options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def default_headers(policy: SendingPolicy, head: HeaderBlock, stream_headers: list[str]) -> bytes:
    """The header fields to put before the message for the policy's default route and stream.

    ``X-Sluice-Provider`` only when the message names no provider (the
    application's choice wins; routing removes the header before sending);
    ``X-Sluice-Stream`` only when no header of ``stream_headers`` names a stream.
    """
    out = b""
    if policy.providers and head.value(PROVIDER_HEADER) is None:
        out += f"{PROVIDER_HEADER}: {', '.join(policy.providers)}\r\n".encode("ascii")
    if policy.stream and not stream_of(head, stream_headers):
        out += f"{STREAM_HEADER}: {policy.stream}\r\n".encode()
    return out


def rate_key(match: Match, ip: str, user: str | None) -> str:
    """Whose messages a policy's rate counts: the user's when authenticated, else the address's."""
    who = f"user:{user}" if user is not None else f"ip:{client_address(ip) or ip}"
    return f"{match.index}/{who}"


class WindowCounter:
    """At most ``rate.count`` messages per key in any ``rate.per`` seconds (a sliding window).

    Kept by the daemon for every accepting process; memory is one timestamp
    per message counted within the window, and keys idle for longer than
    their window are dropped every ``sweep_every`` takes.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 1024
    ) -> None:
        self._clock = clock
        self._sweep_every = sweep_every
        self._takes = 0
        self._windows: dict[str, tuple[float, deque[float]]] = {}

    def take(self, key: str, rate: Rate) -> bool:
        """Count one message for ``key`` if the rate allows it; whether it did."""
        now = self._clock()
        self._takes += 1
        if self._takes % self._sweep_every == 0:
            self._sweep(now)
        _per, stamps = self._windows.setdefault(key, (rate.per, deque()))
        self._windows[key] = (rate.per, stamps)
        while stamps and now - stamps[0] >= rate.per:
            stamps.popleft()
        if len(stamps) >= rate.count:
            return False
        stamps.append(now)
        return True

    def _sweep(self, now: float) -> None:
        idle = [k for k, (per, s) in self._windows.items() if not s or now - s[-1] >= per]
        for key in idle:
            del self._windows[key]

    def __len__(self) -> int:
        return len(self._windows)


class RateGate(Protocol):
    """Where the listener asks whether one more message fits a policy's rate."""

    async def take(self, key: str, rate: Rate) -> bool: ...


class LocalRates:
    """A ``RateGate`` over a counter in this process (the daemon's, or a test's)."""

    def __init__(self, counter: WindowCounter | None = None) -> None:
        self.counter = WindowCounter() if counter is None else counter

    async def take(self, key: str, rate: Rate) -> bool:
        return self.counter.take(key, rate)
