"""What an upstream's reply means: the one place that reads SMTP codes and texts.

Every reply (or error) of one attempt through one provider becomes an
``Outcome`` for each recipient, with a ``Scope`` that says whom it speaks for:

* 2xx after DATA: delivered;
* ``RECIPIENT``: this recipient waits (4xx) or fails (5xx); the provider keeps
  serving everyone else (greylisting, a busy or full mailbox, an unknown user);
* ``PROVIDER``: the provider failed (refused connection, TLS, timeouts, bad
  credentials): the recipient is offered to the next provider at once, and the
  failure counts toward the provider's circuit breaker;
* ``PAUSE``: the provider speaks for itself (421, a 4xx before any recipient
  was named, the same 4xx to every recipient, "rate", "throttling", "try again
  in N minutes"): the next provider at once, and this one is paused;
* ``ELSEWHERE``: this provider cannot carry this message (no SMTPUTF8, a sender
  identity it has not verified): the next provider may; when none is left, the
  last answer stands (a 5xx fails the recipient for good).

The meaning comes from the ``RULES`` table: the first rule that matches the
phase (``Phase``), the code and the text wins, and each rule carries its reason.
Texts quoted in the rules are documented by the providers (SES, Microsoft 365,
Gmail, SendGrid, Mailgun); ``tests/unit/test_replies.py`` holds one case per text.

Errors that are not replies (connection refused, TLS, timeouts) map through
``error_outcome``; an error nobody expected is deferred and logged loudly as a
bug, never retried blindly (stamina's rule). ``final`` decides a recipient's
outcome when several providers answered, naming each provider's answer.
"""

from __future__ import annotations

import errno
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)

from relay.address import domain_of
from relay.enhanced_status import ENHANCED_STATUS, address_status, enhanced_status
from relay.model import Delivered, Outcome, PermFailure, Scope, TempFailure

__all__ = [
    "ACROSS_DOMAINS",
    "ACROSS_WINDOW",
    "RULES",
    "AcrossTransactions",
    "HealthVerdict",
    "Phase",
    "Rule",
    "closes_channel",
    "error_outcome",
    "final",
    "format_reply",
    "hard_bounce",
    "health_verdict",
    "judge",
    "no_smtputf8",
    "reply_outcome",
    "retry_hint",
    "shared_key",
    "shared_refusal",
    "unreadable",
]

log = logging.getLogger("sluice.delivery")


class Phase(StrEnum):
    """Where in the session a reply came (RFC 5321 § 3.3: a transaction is MAIL, RCPT..., DATA)."""

    #: connect, greeting, EHLO, STARTTLS, AUTH: before any transaction
    CONNECT = "connect"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"


_ANY_PHASE = frozenset(Phase)
_TRANSACTION = frozenset({Phase.MAIL, Phase.RCPT, Phase.DATA})


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of the table: when it matches, and what it means."""

    name: str
    scope: Scope
    #: why, with the RFC or provider document it rests on
    why: str
    phases: frozenset[Phase] = _ANY_PHASE
    #: inclusive range of reply codes; ``None`` matches "no readable failure code"
    #: (no reply, an unreadable one, or a 2xx/3xx where a refusal was reported)
    codes: tuple[int, int] | None = (400, 599)
    text: re.Pattern[str] | None = None
    #: True: only when the same kind of reply came to every recipient of a
    #: transaction with more than one (``judge(..., shared=True)``)
    shared: bool = False

    def matches(self, phase: Phase, code: int | None, text: str, shared: bool) -> bool:
        if phase not in self.phases or (self.shared and not shared):
            return False
        if self.codes is None:
            if code is not None and 400 <= code < 600:
                return False
        elif code is None or not self.codes[0] <= code <= self.codes[1]:
            return False
        return self.text is None or self.text.search(text) is not None


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_HINT = re.compile(
    r"(?:try\s+(?:again\s+)?(?:later\s+)?in|retry\s+in|after)\s+(\d+)\s*"
    r"(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b",
    re.IGNORECASE,
)

#: the words with which providers say "you are sending too fast / we are overloaded"
_THROTTLE = (
    r"\brate\b|rate.?limit|throttl|too many|server busy|quota exceeded|limit exceeded"
    r"|temporarily deferred|too frequent|" + _HINT.pattern
)

#: First match wins; order matters (a specific text before the general rule it
#: would otherwise fall under). Scopes: see ``relay.model.Scope``.
RULES: tuple[Rule, ...] = (
    Rule(
        "unverified-identity",
        Scope.ELSEWHERE,
        "SES '554 Message rejected: Email address is not verified. The following "
        "identities failed the check in region ...': this account may not send for "
        "that identity; another provider may carry it (final when none is left)",
        phases=_TRANSACTION,
        text=_re(r"not verified|identities failed the check"),
    ),
    Rule(
        "sandbox",
        Scope.ELSEWHERE,
        "Mailgun '421 Domain ... is not allowed to send: Sandbox subdomains are for "
        "test purposes only' (only authorised recipients): a restriction of this "
        "account for this mail, not an outage; the next provider may carry it",
        phases=_TRANSACTION,
        text=_re(r"not allowed to send|sandbox|authori[sz]ed recipients"),
    ),
    Rule(
        "closing",
        Scope.PAUSE,
        "RFC 5321 § 3.8, § 4.2.2: 421 closes the channel and speaks for the service, "
        "e.g. Gmail '421 4.7.28 ... unusual rate of unsolicited mail', Gmail "
        "'421 4.4.5 Server busy, try again later', SendGrid '421 Message from (IP) "
        "temporarily deferred'",
        codes=(SMTPStatus.domain_unavailable, SMTPStatus.domain_unavailable),
    ),
    Rule(
        "too-many-recipients",
        Scope.RECIPIENT,
        "RFC 5321 § 4.5.3.1.10: '452 too many recipients' refuses the recipients past "
        "a per-transaction limit; they go in a later transaction (M365 '452 4.5.3 Too "
        "many recipients', Gmail '452 4.5.3 Your message has too many recipients')",
        phases=frozenset({Phase.RCPT}),
        codes=(400, 499),
        text=_re(r"too many recipients|\b4\.5\.3\b"),
    ),
    Rule(
        "greylisting",
        Scope.RECIPIENT,
        "Greylisting (RFC 6647) defers one (client, sender, recipient) triplet, "
        "e.g. '451 4.7.1 Greylisted, please try again later': that recipient waits, "
        "nobody else does",
        phases=_TRANSACTION,
        codes=(400, 499),
        text=_re(r"grey.?list|gray.?list"),
    ),
    Rule(
        "mailbox-status",
        Scope.RECIPIENT,
        "RFC 3463 X.2.x is the mailbox's own status (busy, full, receiving too much): "
        "Gmail '450 4.2.1 The user you are trying to contact is receiving mail at a "
        "rate that prevents additional messages from being delivered' is about that "
        "one user, not our rate; Gmail '452 4.2.2 The email account that you tried "
        "to reach is over quota'",
        phases=_TRANSACTION,
        codes=(400, 499),
        text=_re(r"\b4\.2\.\d{1,3}\b|receiving mail (?:at a rate|too quickly)|over quota"),
    ),
    Rule(
        "throttled",
        Scope.PAUSE,
        "The provider says we send too fast or it is overloaded: SES '454 Throttling "
        "failure: Maximum sending rate exceeded' and '... Daily message quota "
        "exceeded', M365 '451 4.7.500 Server busy. Please try again later', "
        "'... try again in 5 minutes': back off from the provider, not one recipient",
        codes=(400, 499),
        text=_re(_THROTTLE),
    ),
    Rule(
        "connect-temporary",
        Scope.PAUSE,
        "RFC 5321 § 4.2.1: a 4xx to the greeting, EHLO, STARTTLS or AUTH (e.g. '454 "
        "4.7.0 Temporary authentication failure') refuses every message for now",
        phases=frozenset({Phase.CONNECT}),
        codes=(400, 499),
    ),
    Rule(
        "connect-refused",
        Scope.PROVIDER,
        "A 5xx before any transaction ('535 5.7.8 authentication failed', '530 5.7.0 "
        "must issue a STARTTLS command first') or no reply at all (refused, TLS, "
        "timeout): this provider takes no mail; another may; counted by the breaker",
        phases=frozenset({Phase.CONNECT}),
        codes=None,
    ),
    Rule(
        "connect-refused-code",
        Scope.PROVIDER,
        "as connect-refused, with a 5xx code",
        phases=frozenset({Phase.CONNECT}),
        codes=(500, 599),
    ),
    Rule(
        "sender-temporary",
        Scope.PAUSE,
        "RFC 5321 § 4.1.1.2: MAIL comes before any recipient is named, so a 4xx "
        "there speaks for the sender, the account or the provider, never for one "
        "recipient",
        phases=frozenset({Phase.MAIL}),
        codes=(400, 499),
    ),
    Rule(
        "every-recipient",
        Scope.PAUSE,
        "The same 4xx to every recipient of a transaction with several (each RCPT, "
        "or DATA for all of them) speaks for the provider, e.g. Postfix smtp-sink "
        "'450 4.3.0 Error: command failed'; with one recipient it cannot be told "
        "from that recipient's own trouble, so that case stays the recipient's",
        phases=frozenset({Phase.RCPT, Phase.DATA}),
        codes=(400, 499),
        shared=True,
    ),
    Rule(
        "temporary",
        Scope.RECIPIENT,
        "RFC 5321 § 4.2.1: 4yz is transient: this recipient is tried again later "
        "(e.g. '450 4.2.1 Mailbox busy', '451 4.3.0 Mail server temporarily rejected "
        "message'); the provider keeps serving everyone else",
        codes=(400, 499),
    ),
    Rule(
        "permanent",
        Scope.RECIPIENT,
        "RFC 5321 § 4.2.1: 5yz is permanent: M365 '550 5.1.10 "
        "RESOLVER.ADR.RecipientNotFound', Gmail '550 5.1.1 The email account that you "
        "tried to reach does not exist', SendGrid '550 Unauthenticated senders not "
        "allowed'",
        codes=(500, 599),
    ),
    Rule(
        "unreadable",
        Scope.RECIPIENT,
        "A reply aiosmtplib could not read (code -1, 'Response too long'), or one that "
        "makes no sense where it came (a 2xx or 3xx reported as a refusal, e.g. 252 to "
        "RCPT): never the upstream's verdict; deferred",
        phases=_TRANSACTION,
        codes=None,
    ),
)


def retry_hint(text: str) -> float | None:
    """Seconds a provider asked us to wait ("try again in 5 minutes"), if any."""
    match = _HINT.search(text)
    if not match:
        return None
    n, unit = int(match.group(1)), match.group(2).lower()
    return float(n * (3600 if unit.startswith("h") else 60 if unit.startswith("m") else 1))


def format_reply(code: int | None, message: str) -> str:
    """``"550 5.1.1 text"`` on one line, as the queue and the log show a reply."""
    text = " ".join(message.split())
    return f"{code} {text}" if code is not None and code > 0 else text


def _readable(code: int | None, text: str) -> int | None:
    """The code, or ``None`` when aiosmtplib could not read the reply.

    aiosmtplib reports a reply it could not parse as code -1, and an overlong one
    as 500 "Response too long": both are local, not the upstream's 5xx.
    """
    if code is None or not 200 <= code < 600:
        return None
    if code == 500 and text.startswith("Response too long"):
        return None
    return code


def judge(phase: Phase, code: int | None, text: str, *, shared: bool = False) -> Rule:
    """The rule of ``RULES`` that gives a non-2xx reply its meaning."""
    readable = _readable(code, text)
    for rule in RULES:
        if rule.matches(phase, readable, text, shared):
            return rule
    raise AssertionError(f"no rule for {phase} {code} {text!r}")  # RULES ends with catch-alls


def reply_outcome(
    recipient: str,
    phase: Phase,
    code: int | None,
    text: str,
    *,
    shared: bool = False,
    reply: str | None = None,
    retry_after: float | None = None,
) -> Outcome:
    """One recipient's outcome from a reply to ``phase``.

    Args:
        recipient: the recipient it concerns.
        phase: the command the reply answered.
        code: the reply code (``None`` or -1: no readable reply).
        text: the reply text, without the code.
        shared: the same kind of reply came to every recipient of a transaction
            with more than one.
        reply: the text to record, when it is not ``"code text"``.
        retry_after: a wait the caller already knows; else read from ``text``.
    """
    shown = reply if reply is not None else format_reply(code, text)
    if phase is Phase.DATA and code is not None and 200 <= code < 300:
        # RFC 5321 § 4.1.1.4: only the reply to the end of the data means delivered.
        return Delivered(recipient, code, shown)
    rule = judge(phase, code, text, shared=shared)
    readable = _readable(code, text)
    final_here = rule.scope in (Scope.RECIPIENT, Scope.ELSEWHERE)
    if readable is not None and readable >= 500 and final_here:
        return PermFailure(recipient, code, shown, scope=rule.scope)
    hint = retry_after if retry_after is not None else retry_hint(text)
    return TempFailure(recipient, code, shown, retry_after=hint, scope=rule.scope)


def _refused(exc: BaseException) -> bool:
    """A refused connection, directly or wrapped by aiosmtplib's ``SMTPConnectError``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # bounded: each exception once
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError) or (
            isinstance(cur, OSError) and cur.errno == errno.ECONNREFUSED
        ):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def closes_channel(code: int | None) -> bool:
    """421: the server is closing the connection (RFC 5321 § 3.8); nothing more can be sent."""
    return code == SMTPStatus.domain_unavailable


def unreadable(code: int | None, text: str) -> bool:
    """aiosmtplib could not read the reply (the session is out of step with the server)."""
    return _readable(code, text) is None


def shared_refusal(replies: Sequence[tuple[int, str]]) -> bool:
    """Several recipients, each refused with a readable 4xx (``judge(..., shared=True)``)."""
    return len(replies) > 1 and all(
        (c := _readable(code, text)) is not None and 400 <= c < 500 for code, text in replies
    )


def error_outcome(
    recipient: str, exc: BaseException, phase: Phase, *, shared: bool = False
) -> Outcome:
    """One recipient's outcome from an exception raised during ``phase``.

    RFC 3463 codes for what we saw ourselves: 4.4.1 no answer from host, 4.4.2
    bad connection, 4.7.5 cryptographic failure, 4.3.0 other (our bug).
    """
    if isinstance(exc, SMTPAuthenticationError):
        text = f"authentication failed: {format_reply(exc.code, exc.message)}"
        return reply_outcome(recipient, Phase.CONNECT, exc.code, exc.message, reply=text)
    if isinstance(exc, SMTPResponseException):
        return reply_outcome(recipient, phase, exc.code, exc.message, shared=shared)
    if _refused(exc):
        why = f"4.4.1 connection refused: {exc}"
    elif isinstance(exc, SMTPTimeoutError | TimeoutError):
        why = f"4.4.1 timeout talking to the provider: {exc}"
    elif isinstance(exc, ssl.SSLError):
        why = f"4.7.5 TLS failure: {exc}"
    elif isinstance(exc, SMTPConnectError):
        why = f"4.4.1 cannot connect: {exc}"
    elif isinstance(exc, SMTPServerDisconnected | ConnectionError | OSError):
        why = f"4.4.2 connection lost: {exc}"
    else:
        log.error("unexpected delivery error for %s; deferring", recipient, exc_info=exc)
        return TempFailure(recipient, None, f"4.3.0 internal error: {type(exc).__name__}: {exc}")
    return TempFailure(recipient, None, why, scope=Scope.PROVIDER)


#: RFC 6531 § 3.4, RFC 3463 5.6.7: a non-ASCII address needs SMTPUTF8
_NO_SMTPUTF8 = "553 5.6.7 the provider does not offer SMTPUTF8 and the address is not ASCII"


def no_smtputf8(recipient: str) -> PermFailure:
    """This provider cannot carry a non-ASCII address: it does not offer SMTPUTF8.

    Not the recipient's failure: another provider in the route may offer it
    (``Scope.ELSEWHERE``); ``final`` fails it only when none did.
    """
    return PermFailure(recipient, 553, _NO_SMTPUTF8, scope=Scope.ELSEWHERE)


def final(
    answers: Sequence[tuple[str, Outcome]], *, waiting: str | None = None, wait: float = 0.0
) -> Outcome:
    """A recipient's outcome after the providers of its route answered in turn.

    Args:
        answers: (provider id, outcome) in the order the providers were tried;
            not empty.
        waiting: why providers of the route were skipped (paused, at a limit),
            if any were: then an answer that only says "not through this
            provider" is not final, as a skipped provider may yet carry it.
        wait: seconds until the first skipped provider may be used again.

    The text names every provider's answer when there were several, the
    one that stands first ("451 4.3.0 busy (via b; a said 421 4.7.0 try
    later)", "250 OK (via b; a said 451 4.3.0 ...)"), so the queue and the
    log say who said what on one line that starts with the code recorded.
    """
    last_id, last = answers[-1]
    text = last.text
    if len(answers) > 1:
        # The answer that stands comes first, so the line starts with its code
        # (pages and DSNs prefix the code to a reply that does not).
        said = "; ".join(f"{pid} said {o.text}" for pid, o in answers[:-1])
        text = " ".join(f"{last.text} (via {last_id}; {said})".split())
    if all(o.text == _NO_SMTPUTF8 for _, o in answers):
        ids = ", ".join(dict.fromkeys(pid for pid, _ in answers))
        text = (
            f"553 5.6.7 no provider offers SMTPUTF8, which a non-ASCII address needs (tried: {ids})"
        )
    if isinstance(last, PermFailure) and last.scope is Scope.ELSEWHERE and waiting is not None:
        return TempFailure(
            last.recipient, None, f"4.4.0 {text}; waiting for: {waiting}", retry_after=wait
        )
    return replace(last, text=text)


#: the same 4xx to recipients of this many distinct domains through one
#: provider speaks for the provider, as it would within one transaction
ACROSS_DOMAINS = 2
#: ... when they all came within this many seconds of each other
ACROSS_WINDOW = 120.0
#: at most this many distinct replies (and domains per reply) are kept per provider
_ACROSS_KEEP = 16

#: an address in a reply (with the colon Postfix writes after it), left out of ``shared_key``
_ADDRESSES = re.compile(r"(?:<[^<>\s]*>|[^\s<>@]+@[^\s<>@]+):?")


def shared_key(outcome: Outcome) -> tuple[int, str, str] | None:
    """What makes two 4xx replies "the same" for ``AcrossTransactions``, or ``None``.

    Only a recipient's 4xx that the "every-recipient" rule would take for the
    provider's own when shared (never greylisting or a mailbox's status):
    the code, the enhanced status code and the text in lower case, with
    addresses and spacing taken out (servers often echo the recipient).
    """
    if not isinstance(outcome, TempFailure) or outcome.scope is not Scope.RECIPIENT:
        return None
    text = outcome.text
    if text[:3].isdigit():
        text = text[3:]
    code = _readable(outcome.code, text)
    if code is None or not 400 <= code < 500:
        return None
    if not judge(Phase.RCPT, code, text, shared=True).shared:
        return None
    status = enhanced_status(text)
    words = " ".join(_ADDRESSES.sub(" ", text.replace(status, "", 1)).lower().split())
    return code, status, words


class AcrossTransactions:
    """The same 4xx to distinct recipients of distinct domains, across transactions.

    "The same 4xx to every recipient" (the ``every-recipient`` rule) can
    only be seen within one transaction; with VERP every recipient is a
    transaction of its own, so a provider that defers everyone would keep
    every recipient deferred while the next provider sits idle. This keeps,
    per provider, the recent recipient 4xx replies (``shared_key``) and the
    domains they came for; once one reply came for ``domains`` distinct
    domains within ``window`` seconds it speaks for the provider, and
    ``lift`` gives those outcomes the scope the rule would have
    (``Scope.PAUSE``: the next provider at once, and this one paused). A
    delivery through the provider forgets what it kept: the reply was not
    for everyone. Distinct domains, because one destination's trouble behind
    a relay (its MX down) defers only that domain's recipients.

    Owned by the scheduler (one per process, like the providers' health);
    bounded: at most ``_ACROSS_KEEP`` replies per provider, and as many
    domains per reply, each forgotten after ``window``.
    """

    def __init__(self, *, window: float = ACROSS_WINDOW, domains: int = ACROSS_DOMAINS) -> None:
        self._window = window
        self._domains = domains
        #: provider id -> reply key -> domain -> when it was last seen
        self._seen: dict[str, dict[tuple[int, str, str], dict[str, float]]] = {}

    def note(self, provider: str, outcomes: Sequence[Outcome], now: float) -> None:
        """Keep the 4xx replies of one transaction through ``provider``."""
        if any(isinstance(o, Delivered) for o in outcomes):
            self._seen.pop(provider, None)
            return
        seen = self._seen.setdefault(provider, {})
        for outcome in outcomes:
            key = shared_key(outcome)
            if key is None:
                continue
            domains = seen.pop(key, {})  # re-inserted last: the oldest key goes first
            domains.pop(domain := domain_of(outcome.recipient), None)
            domains[domain] = now
            while len(domains) > _ACROSS_KEEP:
                del domains[next(iter(domains))]
            seen[key] = domains
            while len(seen) > _ACROSS_KEEP:
                del seen[next(iter(seen))]

    def speaks_for_provider(self, provider: str, outcome: Outcome, now: float) -> bool:
        """Whether ``outcome``'s reply came for enough distinct domains, recently enough."""
        key = shared_key(outcome)
        if key is None:
            return False
        domains = self._seen.get(provider, {}).get(key, {})
        return sum(now - at <= self._window for at in domains.values()) >= self._domains

    def lift(
        self, provider: str, answered: Sequence[tuple[int, Outcome]], now: float
    ) -> tuple[list[tuple[int, Outcome]], list[Outcome]]:
        """``answered`` with each outcome that speaks for the provider given ``Scope.PAUSE``.

        Returns the new list and the outcomes changed now (for the
        provider's health, which pauses it as the rule within one
        transaction does).
        """
        out: list[tuple[int, Outcome]] = []
        lifted: list[Outcome] = []
        for rid, outcome in answered:
            if isinstance(outcome, TempFailure) and self.speaks_for_provider(
                provider, outcome, now
            ):
                outcome = replace(outcome, scope=Scope.PAUSE)
                lifted.append(outcome)
            out.append((rid, outcome))
        return out, lifted


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    """What one attempt says about the provider (``None`` from ``health_verdict``: it is fine)."""

    reason: str
    #: the provider asked to back off: pause it (for ``retry_after``, or the cool-down)
    pause: bool
    retry_after: float | None


def health_verdict(outcomes: Sequence[Outcome]) -> HealthVerdict | None:
    """The provider's health after one attempt; ``None`` when it worked.

    A reply that speaks for the provider (``Scope.PAUSE``) pauses it whatever
    the other recipients got; otherwise the provider failed only if every
    recipient says so (``Scope.PROVIDER``), so one refused recipient never opens
    the circuit breaker.
    """
    paused = [o for o in outcomes if isinstance(o, TempFailure) and o.scope is Scope.PAUSE]
    if paused:
        first = next((o for o in paused if o.retry_after is not None), paused[0])
        return HealthVerdict(first.text, True, first.retry_after)
    faults = [o for o in outcomes if isinstance(o, TempFailure) and o.provider_fault]
    if outcomes and len(faults) == len(outcomes):
        return HealthVerdict(faults[0].text, False, None)
    return None


_NO_SUCH_USER = _re(
    r"user unknown|unknown user|no such user|does not exist|doesn't exist|"
    r"recipient not found|unknown recipient|invalid recipient|mailbox unavailable|"
    r"no mailbox|address rejected"
)


def hard_bounce(outcome: Outcome) -> bool:
    """Whether a permanent refusal says the *address* is bad (a synchronous hard bounce).

    ``550 5.1.1 user unknown`` counts; ``550 5.7.1 blocked as spam`` does not.
    Without an enhanced status code, only a 550/551/553 that says so in words.
    """
    if not isinstance(outcome, PermFailure) or outcome.scope is not Scope.RECIPIENT:
        return False
    text = outcome.text
    if text[:4].strip().isdigit():
        text = text[4:]
    if leading := ENHANCED_STATUS.match(text.lstrip()):
        # relay.enhanced_status.address_status: only X.1.x and 5.2.1 are about
        # the address; policy, content and capacity refusals never count
        # towards suppression.
        return address_status(".".join(leading.groups()))
    return outcome.code in (550, 551, 553) and _NO_SUCH_USER.search(text) is not None
