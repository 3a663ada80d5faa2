"""A provider's health: the word people see (``ProviderHealth``), its rule, the circuit breaker.

Health follows what happens to *deliveries* through the provider, not only
whether it lets us in. Every attempt (one transaction) is summed up as an
``Attempt``; ``judge`` reads the last ``WINDOW`` of them:

* **failing** (``ERROR``, red): the last ``WINDOW`` attempts all delivered
  nothing, each for a reason that speaks for the provider: it failed itself
  (connection, TLS, AUTH, a refusal of MAIL FROM, 421: ``replies.health_verdict``),
  or it gave the *same* reply to every recipient of them, at least two
  distinct ones (``451 4.3.0`` to everyone). A refusal that is about the
  address (``5.1.1``: ``enhanced_status.address_status``) never speaks for
  the provider, nor does "this provider cannot carry this message".
* **degraded** (``DEGRADED``, amber): at least two, and at least half, of the
  recent attempts delivered nothing and were deferred or refused for a reason
  that is not the address. A failure of the provider itself stops counting
  once a later attempt delivered (a provider back from an outage is green at
  its first delivery, as the circuit breaker closes); deferrals count until
  they leave the window, so a provider that deferred everything is amber
  until most of its recent attempts deliver again.
* **healthy** (``OK``, green): otherwise, once an attempt was made.

Independently, after ``threshold`` consecutive failures of the provider
itself the circuit opens: the provider is skipped for ``cooldown`` seconds,
then tried again (half-open); one more failure opens it again, one success
closes it. A reply that asks to back off (421, throttling, "try again in N
minutes"; ``relay.outbound.replies`` decides which) pauses it for its hint,
or the cool-down, whatever the count. A provider skipped either way is
``COOLDOWN``; one whose last attempt failed by its own fault is ``ERROR`` at
once. Times are wall-clock seconds so they can be shown as they are.

In a fleet (nodes sharing a PostgreSQL store) the *skip* is shared, the word
is not: a node whose circuit opens, or that a provider asks to back off,
writes the block to the store, and every node takes a block ending later
than its own as one more reason to skip (``adopt``;
``relay.outbound.shared_limits``). The window and the word stay each node's
own reading of its own attempts.

The daemon keeps this in memory, fed by delivery outcomes; each change is
written to the spool's ``meta`` table as a ``HealthRecord`` (``record_key``)
so that ``sluice providers list``, another process, reads the same answer:
``HealthRecord.resolve`` is the one place that turns it into a word at a time.
No library: the rule is Sluice's own reading of its reply table.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from relay.enhanced_status import address_status, enhanced_status
from relay.model import Delivered, Outcome, PermFailure, ProviderHealth, Scope, TempFailure
from relay.outbound.replies import health_verdict
from relay.wording import plural

__all__ = [
    "WINDOW",
    "Attempt",
    "Health",
    "HealthLog",
    "HealthRecord",
    "HealthView",
    "ProviderHealth",
    "Verdict",
    "judge",
    "record_key",
]

#: how many recent attempts through a provider its health reads
WINDOW = 5


class HealthLog(Protocol):
    """Where the daemon writes each change of a provider's health (the spool's meta table)."""

    async def meta_set(self, values: dict[str, str]) -> None: ...


def record_key(provider_id: str) -> str:
    """The ``meta`` key of a provider's ``HealthRecord``."""
    return f"provider.{provider_id}.health"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt (transaction) through a provider, as its health reads it."""

    at: float
    #: at least one recipient was delivered
    delivered: bool
    #: the provider's own failure (connection, TLS, AUTH, MAIL FROM, 421), else ""
    fault: str = ""
    #: recipients deferred or refused for a reason that is not their address:
    #: (recipient, the reply's code and enhanced status, the reply)
    refusals: tuple[tuple[str, str, str], ...] = ()

    @property
    def troubled(self) -> bool:
        """Nothing delivered, for a reason other than the addresses."""
        return not self.delivered and bool(self.fault or self.refusals)

    @classmethod
    def of(
        cls, outcomes: Sequence[Outcome], at: float, redact: Callable[[str], str] = str
    ) -> Attempt:
        """Sum up one attempt's outcomes (``redact`` masks secrets in the provider's text)."""
        verdict = health_verdict(outcomes)
        refusals = tuple(
            (o.recipient, _reply_key(o.code, o.text), redact(o.text))
            for o in outcomes
            if _speaks_for_provider(o)
        )
        return cls(
            at=at,
            delivered=any(isinstance(o, Delivered) for o in outcomes),
            fault=redact(verdict.reason) if verdict is not None else "",
            refusals=refusals,
        )


def _speaks_for_provider(o: Outcome) -> bool:
    """A deferral or refusal that may be the provider's, not the address's."""
    if isinstance(o, TempFailure):
        return o.scope is not Scope.ELSEWHERE
    if isinstance(o, PermFailure):
        return o.scope is Scope.RECIPIENT and not address_status(enhanced_status(o.text))
    return False


def _reply_key(code: int | None, text: str) -> str:
    """What makes two replies "the same": code and enhanced status (else the text)."""
    status = enhanced_status(text)
    return f"{code} {status}" if status else f"{code} {text.strip().lower()}"


@dataclass(frozen=True, slots=True)
class Verdict:
    state: ProviderHealth
    reason: str


def judge(window: Sequence[Attempt], n: int = WINDOW) -> Verdict:
    """The health word over the recent attempts (pure; rules in the module docstring)."""
    recent = list(window)[-n:]
    if not recent:
        return Verdict(ProviderHealth.UNKNOWN, "")
    troubled = [a for a in recent if a.troubled]
    if len(recent) >= n and len(troubled) == len(recent):
        if all(a.fault for a in recent):
            return Verdict(
                ProviderHealth.ERROR,
                f"the last {plural(n, 'attempt')} failed: {recent[-1].fault}",
            )
        refusals = [r for a in recent if not a.fault for r in a.refusals]
        keys = {key for _rcpt, key, _text in refusals}
        recipients = {rcpt for rcpt, _key, _text in refusals}
        # Every attempt refused (or failed), all refusals alike, across addresses.
        every_one = all(a.fault or len({k for _r, k, _t in a.refusals}) == 1 for a in recent)
        if every_one and len(keys) == 1 and len(recipients) >= 2:
            return Verdict(
                ProviderHealth.ERROR,
                f"the last {plural(n, 'attempt')} got the same reply for every recipient"
                f" ({len(recipients)} different recipients): {refusals[-1][2]}",
            )
    # The provider's own failures end with a delivery (as the circuit breaker
    # closes on one success); deferrals count for their share of the window.
    last_ok = max((i for i, a in enumerate(recent) if a.delivered), default=-1)
    troubled = [a for i, a in enumerate(recent) if a.troubled and not (a.fault and i < last_ok)]
    if len(troubled) >= 2 and 2 * len(troubled) >= len(recent):
        last = troubled[-1]
        text = last.fault or last.refusals[-1][2]
        return Verdict(
            ProviderHealth.DEGRADED,
            f"{len(troubled)} of the last {plural(len(recent), 'attempt')} delivered nothing:"
            f" {text}",
        )
    return Verdict(ProviderHealth.OK, "")


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """A provider's health as written on each change, and read by other processes.

    ``state`` is the word without a cool-down; ``blocked_until`` (while in
    the future) makes it ``COOLDOWN``, whose reason is ``blocked_reason``.
    Only what changes with the word is in it, so that a success through a
    healthy provider writes nothing.
    """

    state: ProviderHealth
    reason: str
    since: float | None
    blocked_until: float | None = None
    blocked_reason: str = ""
    blocked_since: float | None = None

    def resolve(self, now: float) -> tuple[ProviderHealth, str, float | None]:
        """(word, reason, since) at ``now``: a cool-down ends by itself."""
        if self.blocked_until is not None and self.blocked_until > now:
            return ProviderHealth.COOLDOWN, self.blocked_reason, self.blocked_since
        return self.state, self.reason, self.since

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HealthRecord | None:
        """The record in ``text``, or None when it is not one (an older or damaged row)."""
        try:
            data = json.loads(text)
            data["state"] = ProviderHealth(data["state"])
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None


@dataclass(frozen=True, slots=True)
class HealthView:
    state: ProviderHealth
    last_error: str
    last_error_at: float | None
    last_ok_at: float | None
    blocked_until: float | None
    #: why the provider is in this state ("" when healthy or unknown)
    reason: str = ""
    #: since when it is in this state (wall clock; None when unknown)
    since: float | None = None


class Health:
    """Mutable per-provider health, kept across reloads for a provider whose id stays."""

    def __init__(self, window: int = WINDOW) -> None:
        self.failures = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_ok_at: float | None = None
        self._open_until: float | None = None
        self._paused_until: float | None = None
        self.pause_reason = ""
        self._window: deque[Attempt] = deque(maxlen=window)
        self._n = window
        self._word = ProviderHealth.UNKNOWN
        self._since: float | None = None
        self._blocked_since: float | None = None
        #: a block another node of the fleet recorded (``adopt``)
        self._shared_until: float | None = None
        self._shared_reason = ""

    def record_attempt(self, attempt: Attempt) -> None:
        """Add one attempt to the window the health word is judged over."""
        self._window.append(attempt)
        self._settle(attempt.at)

    def record_ok(self, now: float) -> None:
        self.failures = 0
        self.last_ok_at = now
        self._open_until = None
        self._settle(now)

    def record_failure(self, text: str, now: float, *, threshold: int, cooldown: float) -> None:
        self.failures += 1
        self.last_error = text
        self.last_error_at = now
        if self.failures >= threshold and cooldown > 0:
            if self.blocked_until(now) is None:
                self._blocked_since = now
            self._open_until = now + cooldown
        self._settle(now)

    def pause(self, until: float, reason: str, now: float | None = None) -> None:
        """Honour the provider's own request to back off."""
        if self._paused_until is None or until > self._paused_until:
            if now is not None and self.blocked_until(now) is None:
                self._blocked_since = now
            self._paused_until = until
            self.pause_reason = reason

    def adopt(self, until: float, reason: str, since: float, now: float) -> None:
        """Skip the provider until ``until`` because another node does (its ``reason``)."""
        if until <= now or (self._shared_until is not None and until <= self._shared_until):
            return
        if self.blocked_until(now) is None:
            self._blocked_since = since
        self._shared_until = until
        self._shared_reason = reason

    def blocked_until(self, now: float) -> float | None:
        """When the provider may be tried again, or ``None`` if it may be tried now."""
        until = max(self.own_blocked_until(now) or 0.0, self._shared_until or 0.0)
        return until if until > now else None

    def own_blocked_until(self, now: float) -> float | None:
        """``blocked_until`` by this node's own attempts alone (what it tells the fleet)."""
        until = max(self._open_until or 0.0, self._paused_until or 0.0)
        return until if until > now else None

    def why_blocked(self, now: float) -> str:
        if (self._paused_until or 0.0) > now:
            return f"paused at the provider's request: {self.pause_reason}"
        if (self._open_until or 0.0) > now or (self._shared_until or 0.0) <= now:
            return f"cooling down after {plural(self.failures, 'failure')}: {self.last_error}"
        return self._shared_reason

    def _base(self) -> Verdict:
        """The word without a cool-down: a failure of its own now, else the window's."""
        if self.failures:
            return Verdict(ProviderHealth.ERROR, self.last_error)
        verdict = judge(self._window, self._n)
        if verdict.state is ProviderHealth.UNKNOWN and self.last_ok_at is not None:
            return Verdict(ProviderHealth.OK, "")
        return verdict

    def _settle(self, now: float) -> None:
        """Note since when the word (without a cool-down) holds."""
        word = self._base().state
        if word is not self._word:
            self._word, self._since = word, now

    def record(self, now: float) -> HealthRecord:
        """What other processes are told (``HealthRecord.resolve`` turns it into a word)."""
        base = self._base()
        until = self.blocked_until(now)
        return HealthRecord(
            state=base.state,
            reason=base.reason,
            since=self._since,
            blocked_until=until,
            blocked_reason=self.why_blocked(now) if until is not None else "",
            blocked_since=self._blocked_since if until is not None else None,
        )

    def view(self, now: float) -> HealthView:
        rec = self.record(now)
        state, reason, since = rec.resolve(now)
        return HealthView(
            state,
            self.last_error,
            self.last_error_at,
            self.last_ok_at,
            rec.blocked_until,
            reason,
            since,
        )
