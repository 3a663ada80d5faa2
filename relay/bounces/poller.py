"""The bounce mailbox poller: read new bounces every ``poll_interval``, record them, mark them read.

It runs as a task the daemon starts, beside delivery and never in its way:
all IMAP and parsing happen in a worker thread with the mailbox's timeout,
and a mailbox that is down, slow or full of garbage only delays the next
poll (back-off doubling up to an hour). Each message is recorded once: a
bounce's Message-ID (or its digest) is its key in the store, so a poll
that dies between recording and marking does not count it twice.

A failure is kept in ``status`` (shown on the admin overview and in
``/healthz``) and logged once per change, not once per poll.

Each message is read on its own: whatever one message raises while it is
keyed or classified (a parse error, a ``RecursionError`` from a message
nested a thousand levels deep) makes that message *unreadable*, never the
batch. It is logged once with its UID and the reason (no traceback: the
reason is the input, not a bug to chase), counted in ``PollResult`` and
``PollStatus``, and marked like every read message so no later poll reads
it again; the others of the batch are recorded as usual.

A bounce counts only when it is about mail Sluice sent to the address it
names (a signed VERP token, or the returned ``Received:`` line's queue ID
and a recipient that message was delivered to): anyone can send a
well-formed DSN to the bounce address. The rest are kept as *unmatched*
(``Suppressions.record_dsn``), logged one line each, counted in
``PollResult.unmatched``, and never count toward suppression.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from relay.backoff import exponential
from relay.bounces.dsn import BounceReport, UnreadableBounce, read_bounce
from relay.bounces.mailbox import Fetched, Mailbox, MailboxError
from relay.config import BounceSettings, Config, MailboxSettings
from relay.model import Suppression
from relay.store.singleton import Fleet, one_node_at_a_time
from relay.store.suppressions import NewBounce, Suppressions, Threshold
from relay.verp import parse as parse_verp
from relay.verp import token_of

__all__ = ["BouncePoller", "MailboxState", "PollResult", "PollStatus"]

log = logging.getLogger("sluice.bounces")

_MAX_BACKOFF = 3600.0
#: the name of the turn that the node polling the bounce mailbox holds
TURN = "bounces"
#: how often a poller with no mailbox configured looks at the config again (seconds)
_UNCONFIGURED_RECHECK = 1.0


class MailboxState(StrEnum):
    """The bounce mailbox at a glance (the overview's card, ``/api/overview``)."""

    OFF = "off"  #: no bounce mailbox configured
    WAITING = "waiting"  #: configured, not read successfully yet
    OK = "ok"  #: the last poll worked
    FAILING = "failing"  #: the last poll failed
    ELSEWHERE = "elsewhere"  #: another node of the fleet polls it


@dataclass
class PollStatus:
    """What the admin overview and ``/healthz`` show about the bounce mailbox."""

    configured: bool = False
    last_poll_at: float | None = None
    last_ok_at: float | None = None
    last_error: str = ""
    failures: int = 0
    next_poll_at: float | None = None
    #: messages skipped as unreadable since start (marked, never read again)
    unreadable: int = 0
    #: the latest one: "UID 7: RecursionError: ..." ("" when none)
    last_unreadable: str = ""
    last_unreadable_at: float | None = None
    #: another node sharing the store polls the mailbox (this one stands by)
    elsewhere: bool = False

    @property
    def ok(self) -> bool:
        return self.failures == 0

    @property
    def state(self) -> MailboxState:
        """The one word for the mailbox's state (a failure outranks an earlier success)."""
        if self.failures:
            return MailboxState.FAILING
        if self.elsewhere:
            return MailboxState.ELSEWHERE
        return MailboxState.WAITING if self.last_ok_at is None else MailboxState.OK


@dataclass
class PollResult:
    fetched: int = 0
    bounces: int = 0
    #: auto-replies and ordinary mail in the folder
    not_bounces: int = 0
    unreadable: int = 0
    too_large: int = 0
    #: failed addresses of bounces about no mail Sluice sent them (kept, never counted)
    unmatched: int = 0
    suppressed: list[str] = field(default_factory=list)
    #: one "<address> from <sender>: reason" per unmatched failure (``sluice bounces poll``)
    unmatched_lines: list[str] = field(default_factory=list)
    #: one "UID 7: reason" per unreadable message (``sluice bounces poll`` prints them)
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Parsed:
    uid: int
    key: str
    report: BounceReport | None
    raw: bytes | None
    problem: str = ""


class BouncePoller:
    """Polls the configured bounce mailbox; ``poll_once`` is also ``sluice bounces poll``."""

    def __init__(
        self,
        suppressions: Suppressions,
        config: Callable[[], Config],
        *,
        clock: Callable[[], float] = time.time,
        oauth_token: Callable[[], Awaitable[str]] | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._store = suppressions
        #: the spool, when other nodes may share it: its turns say which node polls
        self._fleet = fleet
        self._config = config
        self._clock = clock
        self._oauth_token = oauth_token
        self.status = PollStatus()

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; a failure backs off, never ends the loop.

        With a ``fleet`` (a store other nodes share), only the node holding
        the ``bounces`` turn polls (``relay.store.singleton``): two nodes
        reading one folder would race for its messages. The others wait,
        and one of them takes over when the holder's session ends.
        """
        while not stop.is_set():
            box = self._config().bounces.mailbox
            self.status.configured = box is not None
            if box is not None:
                if self._fleet is None:
                    await self._polls(stop)
                else:
                    await one_node_at_a_time(
                        self._fleet,
                        TURN,
                        stop,
                        self._polls,
                        what="polls the bounce mailbox",
                        standby=self._standby,
                    )
                continue
            # Without a mailbox, look at the config again each second (no I/O): one
            # saved on the admin's bounce form, or by a reload, is read at once.
            self.status.next_poll_at = self._clock() + _UNCONFIGURED_RECHECK
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_UNCONFIGURED_RECHECK):
                    await stop.wait()

    def _standby(self, elsewhere: bool) -> None:
        self.status.elsewhere = elsewhere
        if elsewhere:
            self.status.next_poll_at = None

    async def _polls(self, until: asyncio.Event) -> None:
        """Poll every ``poll_interval`` until ``until`` is set or the mailbox is unconfigured."""
        while not until.is_set():
            box = self._config().bounces.mailbox
            self.status.configured = box is not None
            if box is None:
                return
            try:
                await self.poll_once()
            except Exception as exc:  # never let the poller die: delivery goes on
                self._failed(f"internal error: {type(exc).__name__}: {exc}", exc)
            wait = box.poll_interval
            if self.status.failures:
                # doubling at most 12 times, and never past an hour
                cap = min(_MAX_BACKOFF, box.poll_interval * 2**12)
                wait = exponential(self.status.failures + 1, first=box.poll_interval, cap=cap)
            self.status.next_poll_at = self._clock() + wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await until.wait()

    async def poll_once(self) -> PollResult:
        """Read the mailbox once: record every new bounce, mark what was read.

        Raises:
            MailboxError: the mailbox could not be reached or read (also kept in ``status``).
        """
        cfg = self._config()
        box = cfg.bounces.mailbox
        result = PollResult()
        if box is None:
            return result
        self.status.last_poll_at = self._clock()
        try:
            password, token = await self._credentials(box)
            parsed = await asyncio.to_thread(_fetch_and_parse, box, password, token)
        except MailboxError as exc:
            self._failed(str(exc))
            raise
        result.fetched = len(parsed)
        threshold = Threshold.of(cfg.bounces)
        key = await self._store.verp_key() if cfg.bounces.address else None
        for item in parsed:
            if item.problem:
                if item.raw is None:  # not fetched: over the size limit
                    result.too_large += 1
                else:
                    result.unreadable += 1
                    result.skipped.append(f"UID {item.uid}: {item.problem}")
                    self.status.unreadable += 1
                    self.status.last_unreadable = result.skipped[-1]
                    self.status.last_unreadable_at = self._clock()
                log.warning("bounce mailbox: message %d skipped: %s", item.uid, item.problem)
                continue
            if item.report is None:
                result.not_bounces += 1
                continue
            result.bounces += 1
            sender = item.report.sender
            for bounce, problem in _bounces(item, cfg.bounces, key):
                outcome = await self._store.record_dsn(
                    bounce, threshold, sender=sender, problem=problem, endpoints=cfg.notify.webhooks
                )
                if not outcome.matched:
                    result.unmatched += 1
                    result.unmatched_lines.append(
                        f"<{bounce.address}> from <{sender}>: {outcome.reason}"
                    )
                    log.warning(
                        "bounce not matched, not counted: to=<%s> from=<%s> queue_id=%s: %s",
                        bounce.address,
                        sender,
                        bounce.queue_id or "-",
                        outcome.reason,
                        extra={"event": "bounce_unmatched", "queue_id": bounce.queue_id or ""},
                    )
                    continue
                entry = outcome.entry
                log.info(
                    "bounce: to=<%s> kind=%s status=%s queue_id=%s%s",
                    bounce.address,
                    bounce.kind,
                    bounce.status or "-",
                    bounce.queue_id or "-",
                    _suppressed_note(entry),
                    extra={"event": "bounce", "queue_id": bounce.queue_id or ""},
                )
                if entry is not None:
                    result.suppressed.append(entry.address)
        uids = [p.uid for p in parsed]
        unreadable = [p.uid for p in parsed if p.problem and p.raw is not None]
        try:
            await asyncio.to_thread(_mark_done, box, password, token, uids, unreadable)
        except MailboxError as exc:
            # Recorded already (and keyed): the next poll reads them again, counts nothing twice.
            self._failed(str(exc))
            raise
        if self.status.failures:
            log.info("bounce mailbox: reachable again")
        self.status.failures = 0
        self.status.last_error = ""
        self.status.last_ok_at = self._clock()
        return result

    async def folders(self) -> list[str]:
        """The server's folders (``sluice bounces folders``, the admin's folder choice)."""
        box = self._config().bounces.mailbox
        if box is None:
            raise MailboxError("no bounces.mailbox is configured")
        password, token = await self._credentials(box)

        def listing() -> list[str]:
            with Mailbox(box, password=password, oauth_token=token) as mb:
                return mb.folders()

        return await asyncio.to_thread(listing)

    async def _credentials(self, box: MailboxSettings) -> tuple[str | None, str | None]:
        if box.oauth2 is not None and self._oauth_token is not None:
            try:
                return None, await self._oauth_token()
            except Exception as exc:
                raise MailboxError(f"XOAUTH2 token unavailable: {exc}") from exc
        if box.password is None:
            return None, None
        try:
            secret = await asyncio.to_thread(box.password.resolve)
        except LookupError as exc:
            raise MailboxError(f"mailbox password unavailable: {exc}") from exc
        return secret.get_secret_value(), None

    def _failed(self, text: str, exc: BaseException | None = None) -> None:
        first = self.status.failures == 0 or text != self.status.last_error
        self.status.failures += 1
        self.status.last_error = text
        if first:
            log.warning("bounce mailbox: %s (retrying with back-off)", text, exc_info=exc)


def _fetch_and_parse(
    box: MailboxSettings, password: str | None, token: str | None
) -> list[_Parsed]:
    """In a worker thread: fetch the new messages and read each as a bounce."""
    with Mailbox(box, password=password, oauth_token=token) as mb:
        fetched = mb.fetch_new()
    return [_parse(f, box.max_message_size) for f in fetched]


def _parse(f: Fetched, max_size: int) -> _Parsed:
    if f.data is None:
        return _Parsed(f.uid, "", None, None, f"{f.size} bytes is over the {max_size}-byte limit")
    key = _digest(f.data)
    try:
        key = _key(f.data)
        report = read_bounce(f.data, max_size=max_size)
    except UnreadableBounce as exc:
        return _Parsed(f.uid, key, None, f.data, str(exc))
    except Exception as exc:
        # Broad on purpose: anything one hostile message makes the email package
        # raise (RecursionError on deep nesting, ValueError, ...) is about that
        # message only. Skip it, say why, go on with the batch.
        return _Parsed(f.uid, key, None, f.data, _reason(exc))
    return _Parsed(f.uid, key, report, f.data)


def _reason(exc: Exception) -> str:
    """One short line for the log and the card: the exception's type and its first words."""
    text = " ".join(str(exc).split())
    return f"unreadable: {type(exc).__name__}" + (f": {text[:200]}" if text else "")


def _key(raw: bytes) -> str:
    head = email.message_from_bytes(raw[:65536], policy=email.policy.compat32)
    mid = str(head.get("Message-ID", "")).strip()
    return mid or _digest(raw)


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _mark_done(
    box: MailboxSettings,
    password: str | None,
    token: str | None,
    uids: list[int],
    unreadable: list[int],
) -> None:
    if not uids:
        return
    with Mailbox(box, password=password, oauth_token=token) as mb:
        mb.fetch_new(limit=0)  # selects the folder (and learns whether it takes keywords)
        mb.done(uids, unreadable)


def _bounces(
    item: _Parsed, settings: BounceSettings, key: bytes | None
) -> list[tuple[NewBounce, str]]:
    """One ``NewBounce`` per failed recipient, with why it cannot match ('' when it may).

    A VERP token counts only when its MAC verifies (``relay.verp``); then it
    names the recipient row. A bounce sent to a token that does not verify
    (forged, or answering mail sent before tokens were signed) is unmatched
    outright: it does not fall back on the queue ID a forger can copy. With
    no token, the queue ID of the returned ``Received:`` line is what the
    store checks against the recipients the message was delivered to.
    """
    report = item.report
    assert report is not None
    verp: tuple[str, int] | None = None
    problem = ""
    if settings.address and key is not None:
        tokens = [a for a in report.delivered_to if token_of(a, settings.address) is not None]
        for addr in tokens:
            verp = parse_verp(addr, settings.address, key)
            if verp is not None:
                break
        if verp is None and tokens:
            problem = "a VERP token that does not verify (forged, or older than signed tokens)"
    out = []
    for failure in report.failures:
        bounce = NewBounce(
            address=failure.address,
            kind=failure.kind,
            source="dsn",
            status=failure.status,
            diagnostic=failure.diagnostic,
            queue_id=verp[0] if verp is not None else report.queue_id,
            recipient_id=verp[1] if verp is not None else None,
            key=f"{item.key}:{failure.address.lower()}",
            raw=item.raw,
        )
        out.append((bounce, problem))
    return out


def _suppressed_note(entry: Suppression | None) -> str:
    """The tail of the ``bounce:`` log line when the bounce suppressed its address."""
    if entry is None:
        return ""
    return f" (now suppressed for stream {entry.scope})" if entry.scope else " (now suppressed)"
