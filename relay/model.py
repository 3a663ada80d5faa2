"""Values shared by every layer: states, outcomes and the rows users see.

Every state Sluice has is a ``StrEnum`` here (so JSON, SQL and templates keep
the plain words), and ``STATUS_WORDS`` is the one table that says how a
recipient's status, its delivery-log row and its webhook event correspond.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

# Re-exported: the delivery side checks addresses with the same rules (relay.address).
from relay.address import valid_address
from relay.message import stream_name

__all__ = [
    "ACTIVE",
    "MOVES_ON",
    "STATUS_WORDS",
    "TERMINAL",
    "Action",
    "AddressRule",
    "AttemptStatus",
    "AuditEntry",
    "Claim",
    "ClaimedRecipient",
    "Delivered",
    "EventType",
    "GrantState",
    "LogEntry",
    "MessageDetail",
    "Outcome",
    "PermFailure",
    "ProviderHealth",
    "ProviderPause",
    "QueueEntry",
    "RcptNote",
    "RecipientStatus",
    "Scope",
    "Selection",
    "StatusWords",
    "Suppression",
    "TempFailure",
    "suppressed_for",
    "valid_address",
]


class RecipientStatus(StrEnum):
    """Delivery state of one recipient of one message."""

    QUEUED = "queued"  #: accepted, never tried
    SENDING = "sending"  #: claimed by the scheduler, an attempt is under way
    DEFERRED = "deferred"  #: a temporary failure; waits for next_attempt_at
    SENT = "sent"  #: the upstream accepted it (250 after DATA)
    FAILED = "failed"  #: a permanent failure (5xx)
    EXPIRED = "expired"  #: still failing temporarily after retry.give_up_after
    SUPPRESSED = "suppressed"  #: on the suppression list: never given to a provider
    #: put aside by an operator or a ``hold.rules`` rule: never claimed until released
    HELD = "held"

    @property
    def attempt_status(self) -> AttemptStatus | None:
        """The delivery-log status of the attempt that leaves a recipient here (``STATUS_WORDS``).

        ``None`` for the states no attempt leads to (queued, held).
        """
        return _ATTEMPT_OF.get(self)


#: ``HELD`` is in neither set: it is not delivered, and not finished either.
TERMINAL = frozenset(
    {
        RecipientStatus.SENT,
        RecipientStatus.FAILED,
        RecipientStatus.EXPIRED,
        RecipientStatus.SUPPRESSED,
    }
)
ACTIVE = frozenset({RecipientStatus.QUEUED, RecipientStatus.SENDING, RecipientStatus.DEFERRED})


class AttemptStatus(StrEnum):
    """Status of a delivery-log row (one attempt for one recipient).

    Values are what the spool stores and the JSON API says: lower case, like
    ``RecipientStatus``. ``label`` is what people read on the log page: the
    seed's words, IN PROGRESS, SUCCESS, FAIL (and DEFERRED, BOUNCED,
    SUPPRESSED beside them).
    """

    IN_PROGRESS = "in_progress"
    SUCCESS = "success"
    FAIL = "fail"
    DEFERRED = "deferred"
    #: a bounce (DSN) came back after the message was handed over
    BOUNCED = "bounced"
    #: not sent: the recipient is on the suppression list
    SUPPRESSED = "suppressed"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ").upper()

    @classmethod
    def parse(cls, text: str) -> AttemptStatus | None:
        """A status from its value or its label, in any case (``FAIL``, ``in progress``)."""
        try:
            return cls(text.strip().lower().replace(" ", "_"))
        except ValueError:
            return None


class EventType(StrEnum):
    """What a webhook event reports; an endpoint's ``events`` list filters on these names.

    ``relay.events`` (the bodies, the outbox rows, the signature) re-exports it.
    """

    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    EXPIRED = "expired"
    #: a provider's health changed (``ProviderHealth``)
    PROVIDER_STATE = "provider_state"
    #: a DSN from the bounce mailbox, or a provider's refusal of the address
    BOUNCED = "bounced"
    #: a recipient skipped for the suppression list, or an address bounces suppressed
    SUPPRESSED = "suppressed"
    #: an operator (or a ``hold.rules`` rule) held a recipient ...
    HELD = "held"
    #: ... and an operator released it
    RELEASED = "released"

    @property
    def recipient_status(self) -> RecipientStatus | None:
        """The status the event's recipient is left in (``STATUS_WORDS``).

        ``None`` for events that change no recipient's status (a bounce after
        delivery, a provider's health).
        """
        return _RECIPIENT_OF.get(self)


class StatusWords(NamedTuple):
    """One row of ``STATUS_WORDS``: the three words for one thing that befalls a recipient."""

    #: the recipient's status afterwards (None: unchanged, or no recipient)
    recipient: RecipientStatus | None
    #: the delivery-log row's status (None: no attempt is logged)
    attempt: AttemptStatus | None
    #: the webhook event (None: none is sent)
    event: EventType | None


#: How the status words correspond. Their values happen to be equal where the
#: words are equal, but nothing may rely on that: convert through this table
#: (``RecipientStatus.attempt_status``, ``EventType.recipient_status``). Every
#: member of the three enums is in it (``tests/unit/test_states.py``).
STATUS_WORDS: tuple[StatusWords, ...] = (
    # accepted from an app: nothing tried, nobody told
    StatusWords(RecipientStatus.QUEUED, None, None),
    # claimed by the scheduler: the attempt's log row opens
    StatusWords(RecipientStatus.SENDING, AttemptStatus.IN_PROGRESS, None),
    # the outcomes the scheduler records, each closing the log row and told
    StatusWords(RecipientStatus.SENT, AttemptStatus.SUCCESS, EventType.SENT),
    StatusWords(RecipientStatus.DEFERRED, AttemptStatus.DEFERRED, EventType.DEFERRED),
    StatusWords(RecipientStatus.FAILED, AttemptStatus.FAIL, EventType.FAILED),
    StatusWords(RecipientStatus.EXPIRED, AttemptStatus.FAIL, EventType.EXPIRED),
    StatusWords(RecipientStatus.SUPPRESSED, AttemptStatus.SUPPRESSED, EventType.SUPPRESSED),
    # operator controls: no attempt; a release queues the recipient again
    StatusWords(RecipientStatus.HELD, None, EventType.HELD),
    StatusWords(RecipientStatus.QUEUED, None, EventType.RELEASED),
    # a bounce after delivery is logged and told; the recipient stays sent
    StatusWords(None, AttemptStatus.BOUNCED, EventType.BOUNCED),
    # not about a recipient at all
    StatusWords(None, None, EventType.PROVIDER_STATE),
)

_ATTEMPT_OF: dict[RecipientStatus, AttemptStatus] = {
    row.recipient: row.attempt
    for row in STATUS_WORDS
    if row.recipient is not None and row.attempt is not None
}
_RECIPIENT_OF: dict[EventType, RecipientStatus] = {
    row.event: row.recipient
    for row in STATUS_WORDS
    if row.event is not None and row.recipient is not None
}


class Action(StrEnum):
    """An operator's (or an app's) action, as the audit log and the front-ends name it."""

    RETRY = "retry"  #: make a message due now
    DELETE = "delete"  #: delete a message
    HOLD = "hold"  #: put recipients aside until released
    RELEASE = "release"  #: hand held recipients back to the scheduler
    REROUTE = "reroute"  #: the next attempt of recipients through one provider
    PAUSE = "pause"  #: stop delivering through a provider (mail is still taken)
    RESUME = "resume"  #: end a pause
    #: held past ``hold.expire_after``: expired by Sluice itself
    EXPIRE_HELD = "expire-held"
    SUPPRESS = "suppress"  #: add an address to the suppression list
    UNSUPPRESS = "unsuppress"  #: take it off again
    #: change the config file (a provider added, edited, enabled, disabled, removed;
    #: the bounce settings): the keys changed, never a secret's value
    EDIT_CONFIG = "edit-config"

    @property
    def past(self) -> str:
        """The action done, for what a front-end says afterwards: "held", "rerouted"."""
        return _ACTION_PAST[self]


_ACTION_PAST = {
    Action.RETRY: "made due now",
    Action.DELETE: "deleted",
    Action.HOLD: "held",
    Action.RELEASE: "released",
    Action.REROUTE: "rerouted",
    Action.PAUSE: "paused",
    Action.RESUME: "resumed",
    Action.EXPIRE_HELD: "expired",
    Action.SUPPRESS: "suppressed",
    Action.UNSUPPRESS: "unsuppressed",
    Action.EDIT_CONFIG: "changed in the config file",
}


class ProviderHealth(StrEnum):
    """A provider's health as people and ``provider_state`` events see it."""

    UNKNOWN = "unknown"  #: not tried yet (grey)
    OK = "ok"  #: deliveries through it succeed (green)
    ERROR = "error"  #: failing: its deliveries fail for its own reason, or set up wrong (red)
    COOLDOWN = "cooldown"  #: skipped for now: circuit open, or paused at its own request
    DEGRADED = "degraded"  #: a share of its recent deliveries fail or defer (amber)

    @property
    def label(self) -> str:
        """The word people read (pages, ``providers list``, ``/healthz``): "failing" for ERROR."""
        return _HEALTH_LABEL[self]

    @property
    def trouble(self) -> bool:
        """Failing or in automatic cool-down: ``/healthz`` reports it as degraded."""
        return self in (ProviderHealth.ERROR, ProviderHealth.COOLDOWN)


_HEALTH_LABEL = {
    ProviderHealth.UNKNOWN: "unknown",
    ProviderHealth.OK: "healthy",
    ProviderHealth.ERROR: "failing",
    ProviderHealth.COOLDOWN: "cooling down",
    ProviderHealth.DEGRADED: "degraded",
}


class GrantState(StrEnum):
    """A stored device sign-in (an OAuth refresh token in the spool)."""

    CONNECTED = "connected"  #: usable
    FAILED = "failed"  #: the provider refused it (revoked, expired): sign in again


class Scope(StrEnum):
    """Whom a failed attempt speaks for; ``relay.outbound.replies`` decides it."""

    #: this recipient only (mailbox busy, greylisted, unknown user): it waits or
    #: fails; the provider keeps serving everyone else
    RECIPIENT = "recipient"
    #: the provider failed (connection, TLS, AUTH): the recipient goes to the
    #: next provider at once, and the failure counts toward its circuit breaker
    PROVIDER = "provider"
    #: the provider asked us to back off (421, throttling): the recipient goes to
    #: the next provider at once, and the provider is paused
    PAUSE = "pause"
    #: this provider cannot carry this message (no SMTPUTF8, an identity it has
    #: not verified): the next provider may; the provider's health is untouched
    ELSEWHERE = "elsewhere"


#: scopes after which the recipient is offered to the next provider in its route
MOVES_ON = frozenset({Scope.PROVIDER, Scope.PAUSE, Scope.ELSEWHERE})


@dataclass(frozen=True, slots=True)
class Delivered:
    recipient: str
    code: int
    text: str

    @property
    def moves_on(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class TempFailure:
    recipient: str
    code: int | None
    text: str
    #: a provider hint such as "try again in 5 minutes", in seconds
    retry_after: float | None = None
    scope: Scope = Scope.RECIPIENT

    @property
    def provider_fault(self) -> bool:
        """The provider itself failed or asked to back off (not this recipient)."""
        return self.scope in (Scope.PROVIDER, Scope.PAUSE)

    @property
    def moves_on(self) -> bool:
        """The next provider in the route may take this recipient at once."""
        return self.scope in MOVES_ON


@dataclass(frozen=True, slots=True)
class PermFailure:
    recipient: str
    code: int | None
    text: str
    #: ``ELSEWHERE``: permanent at this provider only; final when no provider is left
    scope: Scope = Scope.RECIPIENT

    @property
    def moves_on(self) -> bool:
        return self.scope is Scope.ELSEWHERE


Outcome = Delivered | TempFailure | PermFailure


class ClaimedRecipient(NamedTuple):
    address: str
    #: attempts before this one
    attempts: int
    #: start of the give-up clock
    since: float
    #: the provider an operator chose for this attempt (``sluice queue reroute``)
    route_override: str | None = None
    #: released from a hold before: ``hold.rules`` no longer apply to it
    was_held: bool = False
    #: an ``archive_bcc`` copy: the sender hears nothing about it (no DSN)
    archive: bool = False


@dataclass(frozen=True, slots=True)
class Claim:
    """A message with the recipients the scheduler claimed for one attempt."""

    message_id: int
    queue_id: str
    sender: str
    received_at: float
    subject: str
    #: recipient row id -> the recipient
    recipients: dict[int, ClaimedRecipient]
    #: recipient row id -> delivery-log row id of this attempt
    attempt_ids: dict[int, int] = field(default_factory=dict)
    #: the stored message, read in the claiming transaction (None: not read)
    data: bytes | None = field(default=None, repr=False)
    #: every line of ``data`` ends in CRLF (checked when it was accepted)
    crlf_only: bool = False
    #: suppression entries in force, when it was claimed, for any of its
    #: recipients and any stream (``suppressed_for`` picks)
    suppressions: tuple[Suppression, ...] = field(default=(), repr=False)


class AddressRule(StrEnum):
    """Which address rule made a recipient what it is (``relay.address_rules``)."""

    #: an alias replaced the address the client gave
    ALIAS = "alias"
    #: ``redirect`` rewrote (or held) a recipient outside its allow-list
    REDIRECT = "redirect"
    #: a copy for ``archive_bcc``, not a recipient the client gave
    ARCHIVE = "archive"


@dataclass(frozen=True, slots=True)
class RcptNote:
    """What an address rule did to one stored recipient, kept beside it in the spool."""

    rule: AddressRule
    #: the address(es) the client gave, comma-separated ("" for an archive copy)
    original: str = ""
    #: not "": stored on hold, with this reason (``redirect.action: hold``)
    held: str = ""


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One recipient of one message, as ``sluice queue list`` and the admin show it."""

    id: int
    queue_id: str
    email: str
    sender: str
    subject: str
    received_at: float
    last_attempt_at: float | None
    next_attempt_at: float | None
    attempts: int
    status: RecipientStatus
    reason: str
    provider: str | None
    size: int
    #: the address the client gave, when an address rule changed it
    original: str = ""
    #: the rule that made this recipient, if any
    rule: AddressRule | None = None
    #: the node that accepted the message (``spool.node``; a fleet's admin shows it)
    node: str = ""

    @property
    def origin(self) -> str:
        """What an address rule did, in words ("" when none did): the message page and CLI."""
        if self.rule is AddressRule.ARCHIVE:
            return "archive copy (archive_bcc)"
        if self.rule is AddressRule.REDIRECT:
            if self.original == self.email:
                return "outside redirect.allow"
            return f"redirected from {self.original}"
        if self.rule is AddressRule.ALIAS:
            return f"alias of {self.original}"
        return ""

    @classmethod
    def from_row(cls, row: Any) -> QueueEntry:
        # Only the message page's query reads the rule columns.
        ruled = "rule" in row.keys()
        return cls(
            id=row["id"],
            queue_id=row["queue_id"],
            email=row["rcpt"],
            sender=row["sender"],
            subject=row["subject"],
            received_at=row["received_at"],
            last_attempt_at=row["last_attempt_at"],
            next_attempt_at=row["next_attempt_at"],
            attempts=row["attempts"],
            status=RecipientStatus(row["status"]),
            reason=row["last_reply"],
            provider=row["provider"],
            size=row["size"],
            original=(row["original_rcpt"] or "") if ruled else "",
            rule=AddressRule(row["rule"]) if ruled and row["rule"] else None,
            node=row["node"] or "",
        )


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One delivery attempt for one recipient: the delivery log."""

    id: int
    queue_id: str
    email: str
    subject: str
    started_at: float
    finished_at: float | None
    status: AttemptStatus
    provider: str | None
    code: int | None
    reason: str
    #: the node that made the attempt (``spool.node``; a fleet's admin shows it)
    node: str = ""

    @classmethod
    def from_row(cls, row: Any) -> LogEntry:
        return cls(
            id=row["id"],
            queue_id=row["queue_id"],
            email=row["rcpt"],
            subject=row["subject"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            status=AttemptStatus(row["status"]),
            provider=row["provider"],
            code=row["code"],
            reason=row["reply"],
            node=row["node"] or "",
        )


@dataclass(frozen=True, slots=True)
class MessageDetail:
    """Everything known about one message: envelope, recipients and attempts."""

    message_id: int
    queue_id: str
    sender: str
    subject: str
    received_at: float
    size: int
    client: str
    helo: str
    recipients: list[QueueEntry]
    attempts: list[LogEntry]
    #: the node that accepted it (``spool.node``)
    node: str = ""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which recipients an operator's action applies to (``sluice queue hold|release|reroute``).

    Every given criterion must match; an empty selection matches nothing, so
    that a forgotten filter never holds the whole queue (``everything`` says
    so on purpose, as ``postsuper -h ALL`` does).
    """

    queue_ids: tuple[str, ...] = ()
    sender: str | None = None
    #: the recipient's domain (``*.example.com`` is not expanded: exact, any case)
    recipient_domain: str | None = None
    #: the provider that last answered for the recipient
    provider: str | None = None
    #: the message's stream (``relay.message.stream_of``), in any case
    stream: str | None = None
    #: received at least this many seconds ago
    older_than: float | None = None
    statuses: tuple[RecipientStatus, ...] = ()
    everything: bool = False

    @property
    def empty(self) -> bool:
        return not self.everything and not (
            self.queue_ids
            or self.sender
            or self.recipient_domain
            or self.provider
            or self.stream
            or self.older_than is not None
            or self.statuses
        )

    def describe(self) -> str:
        """One line for the audit log, e.g. ``sender=a@b.c status=deferred``."""
        parts = []
        if self.queue_ids:
            shown = ",".join(self.queue_ids[:5])
            more = f"+{len(self.queue_ids) - 5}" if len(self.queue_ids) > 5 else ""
            parts.append(f"queue_id={shown}{more}")
        for name in ("sender", "recipient_domain", "provider", "stream"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value}")
        if self.older_than is not None:
            parts.append(f"older_than={self.older_than:g}s")
        if self.statuses:
            parts.append("status=" + ",".join(s.value for s in self.statuses))
        return " ".join(parts) or ("everything" if self.everything else "nothing")


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address mail is not sent to (``relay.store.suppressions`` keeps the list)."""

    address: str
    #: '' for every stream
    scope: str
    source: str
    reason: str
    created_at: float
    expires_at: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> Suppression:
        return cls(
            address=row["address"],
            scope=row["scope"],
            source=row["source"],
            reason=row["reason"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )


def suppressed_for(entries: Iterable[Suppression], stream: str) -> dict[str, Suppression]:
    """By address, the entry that keeps mail of ``stream`` from it.

    An entry for every stream (scope ``''``) and one for this stream both
    apply; the stream's own entry is the one shown. Whether an entry is in
    force now (``expires_at``) is decided where the entries are read.
    """
    found: dict[str, Suppression] = {}
    for entry in sorted(entries, key=lambda e: e.scope, reverse=True):
        # stream_name: entries stored before scopes were normalised keep their case
        if not entry.scope or stream_name(entry.scope) == stream:
            found.setdefault(entry.address, entry)
    return found


@dataclass(frozen=True, slots=True)
class ProviderPause:
    """An operator's pause of one provider (``provider == "*"``: all of them)."""

    provider: str
    reason: str
    #: None: until resumed
    until: float | None
    actor: str
    at: float

    def active(self, now: float) -> bool:
        return self.until is None or self.until > now

    @classmethod
    def from_row(cls, row: Any) -> ProviderPause:
        return cls(row["provider"], row["reason"], row["until"], row["actor"], row["at"])


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action: who, when, what, on what, and how many recipients."""

    id: int
    at: float
    actor: str
    #: an ``Action`` value (kept a plain string: rows written by any version read back)
    action: str
    target: str
    count: int
    detail: str

    @classmethod
    def from_row(cls, row: Any) -> AuditEntry:
        return cls(
            row["id"],
            row["at"],
            row["actor"],
            row["action"],
            row["target"],
            row["count"],
            row["detail"],
        )
