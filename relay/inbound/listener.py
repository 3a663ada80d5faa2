"""The SMTP listener: accept mail from local applications into the spool.

Sluice's side of the SMTP server: the handler hooks, the peer check and
connection limit asked before the greeting, and the servers of one daemon.
What it overrides of aiosmtpd itself is in ``relay.inbound.aiosmtpd_seams``.

The handler's only dependency is the spool. ``250`` is returned only after
``Spool.enqueue`` has committed (WAL, ``synchronous=FULL``); any failure
before that is answered ``451 4.3.0`` so that the client keeps the message
(RFC 5321 § 4.1.1.4: a message answered 4xx is never delivered by us).

Servers are created with ``loop.create_server`` on the daemon's own loop,
never aiosmtpd's threaded ``Controller`` (two loops would share the spool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.address import NULL_PATH, address_problem, needs_smtputf8
from relay.address_rules import AddressRules
from relay.config import Endpoint, ListenerSettings, Network, SmtpSettings
from relay.errors import QueueIdTaken, SpoolError, SpoolUnreachable
from relay.inbound.admission import AcceptServer, Admission, bind_endpoint, listen_backlog
from relay.inbound.aiosmtpd_seams import Gate, RelaySMTP, peer_ip
from relay.inbound.auth import FailureGate, SmtpAuth
from relay.inbound.data import Data
from relay.inbound.descriptors import Throttle, fit_sessions, quiet_emfile
from relay.inbound.policy import (
    R_RATE,
    R_SENDER_NOT_ALLOWED,
    R_TOO_BIG,
    LocalRates,
    Match,
    RateGate,
    client_address,
    default_headers,
    from_refusal,
    mail_size,
    policy_for,
    rate_key,
    sender_allowed,
)
from relay.message import HeaderBlock, bare_line_ending, extract_subject
from relay.received import helo_name, received_header
from relay.runner import GIVE_BACK_AFTER, LARGE_MESSAGE, give_back_memory
from relay.store.spool import NewMessage, Spool, stored_under_fresh_id
from relay.store.writer import is_disk_full
from relay.tls import server_context
from relay.wording import plural

__all__ = [
    "AcceptEvents",
    "Listener",
    "RelayHandler",
    "Sessions",
    "SpoolRefusals",
    "gate",
    "peer_filter",
    "start_listeners",
]

log = logging.getLogger("sluice.smtp")

# Reply texts, named so that tests and docs can refer to them. All ASCII:
# a reply is sent as UTF-8 only to a client that asked for SMTPUTF8, and
# tests/inbound/test_replies.py checks every one.
R_MAIL_OK = "250 2.1.0 Sender OK"
R_TOO_BIG_FIXED = "552 5.3.4 Message size exceeds fixed maximum message size ({limit} bytes)"
R_RCPT_OK = "250 2.1.5 Recipient OK"
R_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients (limit {limit}); send the rest in a new message"
R_BAD_RCPT = "501 5.1.3 Bad recipient address syntax: {reason}"
#: an address rule refuses it (relay.address_rules): a local name without an alias
R_NO_ALIAS = "550 5.1.1 <{address}>: {reason}"
R_BAD_SENDER = "501 5.1.7 Bad sender address syntax: {reason}"
# RFC 6531 section 3.7.4.1 (Postfix gives the same code).
#: a recipient on the suppression list, with smtp.refuse_suppressed
R_SUPPRESSED = (
    "550 5.7.1 Recipient is on this relay's suppression list (source: {source}); "
    "mail to it is not sent"
)
R_NEED_SMTPUTF8 = "553 5.6.7 A non-ASCII address needs SMTPUTF8 on MAIL FROM (RFC 6531)"
R_BARE_LF = (
    "550 5.6.0 Message contains a bare LF or CR line ending at byte {offset}; "
    "lines must end in CRLF (RFC 5321 section 2.3.8)"
)
R_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections (limit {limit}); try again later"
R_SPOOL_ERROR = "451 4.3.0 Could not store the message (local spool error); try again later"
# A PostgreSQL store whose server is down or out of reach: the reason says which, so that
# the app's log shows where to look (the code stays 4.3.0, a mail system condition).
R_SPOOL_UNREACHABLE = (
    "451 4.3.0 Could not store the message (the spool database is unreachable); try again later"
)
R_INTERNAL = "451 4.3.0 Internal error; try again later"
# RFC 5321 § 4.2.2 (452: insufficient system storage), RFC 3463 4.3.1 (mail system full).
R_DISK_FULL = "452 4.3.1 Insufficient system storage (the spool's disk is full); try again later"
R_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
R_DENIED = "554 5.7.1 Access denied: {peer} is not in smtp.allowed_networks"
#: a client outside a listener's own ``networks``
R_DENIED_HERE = "554 5.7.1 Access denied: {peer} is not in this listener's networks"
R_SHUTDOWN = "421 4.3.2 Service shutting down, try again later"

Clock = Callable[[], float]

#: at shutdown, how long a message being stored may take before its session is closed anyway
_COMMIT_WAIT = 10.0
#: how long an implicit-TLS client may take over its handshake
_HANDSHAKE_TIMEOUT = 30.0


class AcceptEvents(Protocol):
    """Where the listener reports what it accepted and refused.

    ``relay.metrics.Metrics`` in the daemon; in an accept worker process, the
    channel to the daemon (``relay.inbound.workers``), which also wakes its scheduler.
    """

    def on_accept(self, size: int) -> None: ...

    def on_reject(self, reason: str) -> None: ...

    def on_auth(self, result: str) -> None:
        """One AUTH ended: ``ok``, ``failed`` or ``locked`` (``relay.inbound.auth``)."""


class _NoEvents:
    def on_accept(self, size: int) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass

    def on_auth(self, result: str) -> None:
        pass


class SpoolRefusals:
    """What the log says about mail the spool cannot take: a line per interval, with a count.

    A full disk refuses every message, as fast as clients retry (24,487
    lines in 25 s before this). The first refusal is logged at once, the
    rest are counted into one line per ``interval``, and the first message
    taken after a logged refusal says so (once, with the count since). A disk
    on the edge of full, taking and refusing mail by turns, logs no more.
    """

    def __init__(self, interval: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        #: when a refusal was last logged; refusals counted since; "taking mail again" owed
        self._logged_at: float | None = None
        self._count = 0
        self._owed = False

    def refused(self, client: str, error: object, *, disk_full: bool) -> None:
        """One message (or MAIL) refused because of the spool; logs if a line is due."""
        now = self._clock()
        self._count += 1
        if self._logged_at is not None and now - self._logged_at < self._interval:
            return
        what = "spool disk full" if disk_full else "spool write failing"
        if self._count == 1:
            log.error(
                "%s: refusing mail (from %s: %s); refusals are counted, a line a minute",
                what,
                client,
                error,
                extra={"event": "spool_refused"},
            )
        else:
            assert self._logged_at is not None
            log.error(
                "%s: %s refused in the last %.0f s (%s)",
                what,
                plural(self._count, "message"),
                now - self._logged_at,
                error,
                extra={"event": "spool_refused"},
            )
        self._logged_at, self._count, self._owed = now, 0, True

    def accepted(self) -> None:
        """A message was taken: if a refusal was logged, say once that mail flows again."""
        if not self._owed:
            return
        log.warning(
            "spool takes mail again (%s refused since the last line)",
            plural(self._count, "message"),
            extra={"event": "spool_refused"},
        )
        self._count, self._owed = 0, False


class RelayHandler:
    """aiosmtpd hooks for one listener, and ``accept`` for a whole message.

    Reads the current settings at each use.
    """

    def __init__(
        self,
        spool: Spool,
        settings: Callable[[], SmtpSettings],
        *,
        hostname: str,
        clock: Clock = time.time,
        events: AcceptEvents | None = None,
        rules: Callable[[], AddressRules] = AddressRules,
        rates: RateGate | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._events = events or _NoEvents()
        #: the address rules of the current config (aliases, redirect, archive_bcc)
        self._rules = rules
        #: counts ``smtp.policies`` rates (the daemon's counter, for every accepting process)
        self._rates = rates or LocalRates()
        self._rng = rng or random.Random()  # queue IDs (seeded from os.urandom)
        self._spool = spool
        self._settings = settings
        self._hostname = hostname
        self._clock = clock
        self._refusals = SpoolRefusals()

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        # Any name is accepted and kept escaped (``relay.received.helo_name``
        # says why): aiosmtpd would keep undecodable bytes as lone surrogates,
        # which the spool cannot store (a 451 for every message of the session).
        session.host_name = helo_name(hostname)
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # aiosmtpd reads commands one line at a time and answers in order, so
        # pipelined commands (RFC 2920) are safe; it just doesn't say so.
        session.host_name = helo_name(hostname)
        if not getattr(server, "offers_auth", True):
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        match = self._policy(session)
        if match is not None and match.policy.max_message_size is not None:
            # Known before MAIL only for a network's policy (a user's comes after AUTH).
            size = f"SIZE {self._size_limit(match)}"
            responses = [r[:4] + size if r[4:].startswith("SIZE ") else r for r in responses]
        return responses

    def _policy(self, session: Session) -> Match | None:
        """The ``smtp.policies`` entry that applies to this session now (AUTH may change it)."""
        policies = self._settings().policies
        if not policies:
            return None
        user = session.auth_data if session.authenticated else None
        return policy_for(policies, peer_ip(session), user if isinstance(user, str) else None)

    def _size_limit(self, match: Match | None) -> int:
        limit = self._settings().max_message_size
        if match is not None and match.policy.max_message_size is not None:
            limit = min(limit, match.policy.max_message_size)
        return limit

    def _size_refusal(self, match: Match | None, options: list[str]) -> str | None:
        """At MAIL: Sluice's ``552 5.3.4`` for a ``SIZE=`` over the session's limit, or ``None``.

        Every such refusal is Sluice's (``RelaySMTP.smtp_MAIL`` turns
        aiosmtpd's own check off): a policy's limit is named as the
        user's/network's, ``smtp.max_message_size`` as the fixed maximum.
        """
        declared = mail_size(options)
        limit = self._size_limit(match)
        if declared is None or declared <= limit:
            return None
        if match is not None and limit == match.policy.max_message_size:
            self._events.on_reject("policy_size")
            return R_TOO_BIG.format(limit=limit)
        return R_TOO_BIG_FIXED.format(limit=limit)

    async def _policy_refusal(
        self, server: SMTP, session: Session, address: str, options: list[str]
    ) -> str | None:
        """At MAIL: the reply refusing it under the session's policy, or ``None``.

        Also sets the session's size limit for DATA. The rate is counted last,
        so a MAIL refused for another reason does not use up the client's rate
        (the spool's room is checked before it, by the caller's order too).
        """
        match = self._policy(session)
        server.data_size_limit = self._size_limit(match)
        if match is None:
            return self._size_refusal(None, options)
        policy = match.policy
        ip = peer_ip(session)
        user = session.auth_data if session.authenticated else None
        who = f"{ip} (user {user})" if user else ip
        if not sender_allowed(policy, address):
            log.warning(
                "refused MAIL FROM:<%s> from %s: not allowed by smtp.policies[%d].allowed_senders",
                address.strip("<>"),
                who,
                match.index,
                extra={"event": "policy_refused"},
            )
            self._events.on_reject("policy_sender")
            return R_SENDER_NOT_ALLOWED
        if (too_big := self._size_refusal(match, options)) is not None:
            return too_big
        if policy.rate is not None and not self._spool.disk_full:
            key = rate_key(match, ip, user if isinstance(user, str) else None)
            try:
                allowed = await self._rates.take(key, policy.rate)
            except TimeoutError:
                # An accept worker whose daemon does not answer (stuck, or gone
                # and this worker about to stop): the client tries again later.
                log.error("no answer from the daemon's rate count: MAIL from %s answered 451", who)
                return R_INTERNAL
            if not allowed:
                log.warning(
                    "refused MAIL FROM:<%s> from %s: over smtp.policies[%d].rate (%d per %gs)",
                    address.strip("<>"),
                    who,
                    match.index,
                    policy.rate.count,
                    policy.rate.per,
                    extra={"event": "policy_refused"},
                )
                self._events.on_reject("policy_rate")
                unit = {1.0: "second", 60.0: "minute", 3600.0: "hour"}.get(policy.rate.per, "?")
                return R_RATE.format(count=policy.rate.count, per=unit)
        return None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address == NULL_PATH:
            # The null reverse-path of bounces (RFC 5321 section 4.5.5). aiosmtpd
            # needs a truthy mail_from, so "<>" stands for it until DATA.
            pass
        elif needs_smtputf8(address) and "SMTPUTF8" not in options:
            return R_NEED_SMTPUTF8
        elif (problem := address_problem(address)) is not None:
            return R_BAD_SENDER.format(reason=problem)
        if self._settings().policies:
            refusal = await self._policy_refusal(server, session, address, options)
        else:
            refusal = self._size_refusal(None, options)
        if refusal is not None:
            return refusal
        if self._spool.disk_full:
            # Refused before the client sends its body (Postfix does the same):
            # the message stays with the client until there is room.
            self._refusals.refused(peer_ip(session), "no room for mail", disk_full=True)
            self._events.on_reject("disk_full")
            return R_DISK_FULL
        if self._spool.unreachable:
            # The same for a PostgreSQL store just found out of reach.
            why = "the spool database is unreachable"
            self._refusals.refused(peer_ip(session), why, disk_full=False)
            self._events.on_reject("spool_unreachable")
            return R_SPOOL_UNREACHABLE
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return R_MAIL_OK

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        limit = self._settings().max_recipients
        if len(envelope.rcpt_tos) >= limit:
            # RFC 5321 section 4.5.3.1.10: refuse the extra ones, keep those accepted.
            return R_TOO_MANY_RCPTS.format(limit=limit)
        if needs_smtputf8(address) and not envelope.smtp_utf8:
            return R_NEED_SMTPUTF8
        if (problem := address_problem(address)) is not None:
            return R_BAD_RCPT.format(reason=problem)
        if (refused := self._rules().refusal(address)) is not None:
            self._events.on_reject("no_alias")
            return R_NO_ALIAS.format(address=address, reason=refused)
        if self._settings().refuse_suppressed:
            entry = await self._spool.suppressions.active(address)
            if entry is not None and entry.scope == "":
                self._events.on_reject("suppressed")
                return R_SUPPRESSED.format(source=entry.source)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return R_RCPT_OK

    async def accept(self, session: Session, envelope: Envelope, data: Data) -> str:
        """Store one message read by ``RelaySMTP.smtp_DATA``; the reply to send."""
        crlf_only = data.crlf_only
        content = data.content
        settings = self._settings()
        if settings.bare_line_endings == "reject" and not crlf_only:
            offset = bare_line_ending(content)
            if offset is not None:
                log.warning("rejected message from %s: bare line ending", peer_ip(session))
                self._events.on_reject("bare_line_ending")
                return R_BARE_LF.format(offset=offset)
            crlf_only = True
        if settings.policies:
            match = self._policy(session)
            if match is not None:
                head = HeaderBlock(content)
                refusal = from_refusal(match.policy, head)
                if refusal is not None:
                    log.warning(
                        "rejected message from %s: From not allowed by "
                        "smtp.policies[%d].allowed_from_domains (%s)",
                        peer_ip(session),
                        match.index,
                        refusal[10:],
                        extra={"event": "policy_refused"},
                    )
                    self._events.on_reject("policy_from")
                    return refusal
                content = default_headers(match.policy, head, self._spool.stream_headers) + content
        now = self._clock()
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if envelope.smtp_utf8:
            protocol = "UTF8SMTP"  # RFC 6531 section 3.7.3
        if session.extended_smtp:
            # RFC 3848 (and RFC 6531 section 3.7.3 for UTF8SMTP): S over TLS, A after AUTH.
            protocol += ("S" if session.ssl is not None else "") + (
                "A" if session.authenticated else ""
            )
        sender = "" if envelope.mail_from == NULL_PATH else (envelope.mail_from or "")
        resolved = self._rules().resolve(sender, envelope.rcpt_tos)
        client, subject = peer_ip(session), extract_subject(content)
        recipients = list(envelope.rcpt_tos)

        def make(queue_id: str) -> NewMessage:
            header = received_header(
                helo=session.host_name,
                client_ip=client,
                hostname=self._hostname,
                queue_id=queue_id,
                protocol=protocol,
                recipients=recipients,
                now=now,
                utf8=envelope.smtp_utf8,
            )
            return NewMessage(
                queue_id=queue_id,
                sender=sender,
                recipients=resolved.recipients,
                notes=resolved.notes,
                data=header + resolved.header + content,
                subject=subject,
                received_at=now,
                client=client,
                helo=session.host_name or "",
                # The Received header is CRLF-only by construction.
                crlf_only=crlf_only,
            )

        try:
            message, queue_id = await stored_under_fresh_id(
                make, self._spool.enqueue, now, self._rng
            )
        except SpoolUnreachable as exc:
            self._refusals.refused(client, exc, disk_full=False)
            self._events.on_reject("spool_unreachable")
            return R_SPOOL_UNREACHABLE
        except QueueIdTaken as exc:  # every ID drawn was taken: the random source, not the spool
            self._refusals.refused(client, exc, disk_full=False)
            self._events.on_reject("spool_error")
            return R_SPOOL_ERROR
        except SpoolError as exc:
            full = is_disk_full(exc) or self._spool.disk_full
            self._refusals.refused(client, exc, disk_full=full)
            self._events.on_reject("spool_error")
            return R_SPOOL_ERROR
        self._refusals.accepted()
        # Counted and logged just after the 250 is written (the next turn of
        # the loop), not before: the client waits for its reply, not for our
        # log line. The message is already committed either way.
        loop = asyncio.get_running_loop()
        loop.call_soon(self._accepted, message)
        if len(message.data) >= LARGE_MESSAGE:
            loop.call_later(GIVE_BACK_AFTER, give_back_memory)
        return R_QUEUED.format(queue_id=queue_id)

    @property
    def events(self) -> AcceptEvents:
        """Where what the listener accepts and refuses is reported."""
        return self._events

    def _accepted(self, message: NewMessage) -> None:
        self._events.on_accept(len(message.data))
        log.info(
            "%s: accepted from=<%s> nrcpt=%d size=%d client=%s",
            message.queue_id,
            message.sender,
            len(message.recipients),
            len(message.data),
            message.client,
            extra={"event": "accept", "queue_id": message.queue_id},
        )

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default turns any exception into a permanent 500 that
        # leaks internals; a local problem is temporary by nature.
        log.error("error in SMTP session", exc_info=error)
        return R_INTERNAL


@dataclass
class Sessions:
    """The open sessions of one listener (of one process), and what refusing them logs."""

    open: set[RelaySMTP] = field(default_factory=set)
    refusals: Throttle = field(default_factory=Throttle)
    #: accepted clients whose session is being set up
    starting: set[asyncio.Task[None]] = field(default_factory=set)


def in_networks(ip: str, networks: Sequence[Network]) -> bool:
    """Whether an IP address (text, as a socket gives it) is in one of ``networks``."""
    addr = client_address(ip)
    return addr is not None and any(addr in net for net in networks)


def peer_filter(
    settings: Callable[[], SmtpSettings], listener: Endpoint | None = None
) -> Callable[[str], bool]:
    """Whether an IP address may connect (read at each call).

    ``smtp.allowed_networks``, or the ``networks`` of the ``listen`` entry
    of address ``listener`` when it has its own.
    """

    def allowed(ip: str) -> bool:
        return in_networks(ip, _networks(settings(), listener))

    return allowed


def _entry(current: SmtpSettings, listener: Endpoint | None) -> ListenerSettings | None:
    if listener is None:
        return None
    try:
        return current.listener(listener)
    except KeyError:  # removed by a reload; its sessions carry on with the defaults
        return None


def _networks(current: SmtpSettings, listener: Endpoint | None) -> list[Network]:
    entry = _entry(current, listener)
    return entry.connect_networks(current) if entry is not None else current.allowed_networks


def gate(
    allowed: Callable[[str], bool],
    refusals: Throttle,
    limit: Callable[[], int],
    denied: Callable[[], str] = lambda: R_DENIED,
) -> Gate:
    """What ``RelaySMTP`` asks before it greets a client: the reply refusing it, or ``None``.

    Args:
        allowed: the peer check (``peer_filter``).
        refusals: throttles the log lines of refusals over the limit.
        limit: the sessions allowed at once (``smtp.max_connections``, fitted
            to the descriptors).
        denied: the refusal to send (read at each refusal: a reload may give
            the listener networks of its own).
    """

    def refusal(ip: str, open_sessions: int) -> str | None:
        if not allowed(ip):
            reply = denied()
            where = "smtp.allowed_networks" if reply == R_DENIED else "the listener's networks"
            log.warning("refused connection from %s: not in %s", ip, where)
            return reply.format(peer=ip)
        max_connections = limit()
        if open_sessions >= max_connections:
            # Clients over the limit wait in the backlog (``Admission``); this
            # one was accepted while the limit was higher (a reload lowered it):
            # the client retries later (RFC 5321 section 3.8).
            suppressed = refusals.take()
            if suppressed is not None:
                log.warning(
                    "refused connection from %s: smtp.max_connections (%d) reached%s",
                    ip,
                    max_connections,
                    f" ({suppressed} more since the last message)" if suppressed else "",
                )
            return R_TOO_MANY_CONNECTIONS.format(limit=max_connections)
        return None

    return refusal


@dataclass
class Listener:
    """The SMTP servers of one daemon and the sessions they hold open."""

    servers: list[AcceptServer]
    sessions: Sessions = field(default_factory=Sessions)
    #: the configured address of each server, and how to serve bound sockets (for ``rebind``)
    endpoints: list[Endpoint] = field(default_factory=list)
    #: the sessions held against ``smtp.max_connections`` (``peak``: the most at once)
    admission: Admission | None = None
    server: Callable[[list[socket.socket], Endpoint], AcceptServer] | None = None
    #: False when accept worker processes serve these sockets (``relay.inbound.workers``)
    serve: bool = True
    _retired: list[AcceptServer] = field(default_factory=list)

    @property
    def addresses(self) -> list[Endpoint]:
        out = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(Endpoint(host, port))
        return out

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets, in ``addresses`` order (to hand to accept workers)."""
        return [sock for server in self.servers for sock in server.sockets]

    @property
    def bound(self) -> list[tuple[Endpoint, socket.socket]]:
        """Each listening socket with the ``smtp.listen`` address it serves (for accept workers)."""
        return [
            (ep, sock)
            for ep, server in zip(self.endpoints, self.servers, strict=True)
            for sock in server.sockets
        ]

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    async def rebind(self, endpoints: Sequence[Endpoint]) -> None:
        """Listen on ``endpoints`` instead (a reload): bind the new ones, then close the old.

        Addresses in both lists keep their socket. Open sessions on a removed
        address carry on. If a new address cannot be bound, nothing changes.

        Raises:
            OSError: binding a new address failed.
        """
        assert self.server is not None, "rebind needs the listener from start_listeners"
        current = dict(zip(self.endpoints, self.servers, strict=True))
        added = [ep for ep in endpoints if ep not in current]
        opened: list[AcceptServer] = []
        try:
            for ep in added:
                opened.append(self.server(await bind_endpoint(ep.host, ep.port), ep))
        except OSError:
            for server in opened:
                server.close()
            raise
        if self.serve:
            for server in opened:
                server.start_serving()
        fresh = dict(zip(added, opened, strict=True))
        removed = [s for ep, s in current.items() if ep not in endpoints]
        self.endpoints = list(dict.fromkeys(endpoints))
        self.servers = [current.get(ep) or fresh[ep] for ep in self.endpoints]
        for server in removed:
            server.close()
        self._retired.extend(removed)

    async def aclose(self, grace: float) -> None:
        """Stop accepting, let sessions finish for ``grace`` seconds, then 421 the rest.

        ``grace=0`` ends every session at once (an accept worker whose daemon
        is gone), except that a message being stored still gets its answer.
        """
        self.stop_accepting()
        for server in self._retired:
            server.close()
        self.servers.extend(self._retired)
        self._retired.clear()
        tasks = [t for s in self.sessions.open if (t := s.task) is not None]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        await asyncio.gather(*(_end(session) for session in list(self.sessions.open)))
        # The closed sessions' tasks end at their next await; wait for that, so
        # that none is still inside the spool when its owner closes it.
        tasks = [t for s in self.sessions.open if (t := s.task) is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_COMMIT_WAIT)
        for server in self.servers:
            await server.wait_closed()


async def _end(session: RelaySMTP) -> None:
    """Tell the client we are stopping (RFC 5321 section 3.8) and close.

    A message being stored is answered first: a client must not hear 421 for
    mail that was committed (it would send it again).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_COMMIT_WAIT):
            await session.between_messages.wait()
    await session.close_with(R_SHUTDOWN)


class TlsContexts:
    """The server TLS context of each ``smtp.listen`` address, built again after a reload.

    Contexts are built from the settings in use: when ``settings()`` returns
    a new object (a reload, in the daemon or in an accept worker), the
    certificates are read again, so a new session gets the new certificate
    while open ones keep the context they started with. A certificate that
    cannot be read then (``load`` checked it a moment before) keeps the
    previous context and logs why.
    """

    def __init__(self, settings: Callable[[], SmtpSettings]) -> None:
        self._settings = settings
        self._for: SmtpSettings | None = None
        self._contexts: dict[Endpoint, ssl.SSLContext] = {}

    def get(self, address: Endpoint) -> ssl.SSLContext | None:
        """The context for ``address`` (``None``: no TLS there)."""
        current = self._settings()
        if current is not self._for:
            self._build(current)
        return self._contexts.get(address)

    def _build(self, current: SmtpSettings) -> None:
        contexts: dict[Endpoint, ssl.SSLContext] = {}
        for entry in current.listen:
            if entry.tls == "none" or entry.cert_file is None or entry.key_file is None:
                continue
            try:
                contexts[entry.address] = server_context(entry.cert_file, entry.key_file)
            except OSError as exc:
                log.error(
                    "smtp.listen %s: cannot load the certificate (%s); keeping the previous one",
                    entry.address,
                    exc,
                )
                if entry.address in self._contexts:
                    contexts[entry.address] = self._contexts[entry.address]
        self._contexts = contexts
        self._for = current


def _auth_needed(settings: Callable[[], SmtpSettings], address: Endpoint) -> Callable[[str], bool]:
    """(client IP) -> whether it must AUTH before MAIL on the listener at ``address``."""

    def needed(ip: str) -> bool:
        current = settings()
        entry = _entry(current, address)
        if entry is None or entry.auth_mode != "required":
            return False
        return not in_networks(ip, entry.no_auth_networks)

    return needed


async def start_listeners(
    settings: Callable[[], SmtpSettings],
    handler: RelayHandler,
    *,
    hostname: str,
    serve: bool = True,
    sockets: Sequence[tuple[Endpoint, socket.socket]] = (),
    auth_failures: FailureGate | None = None,
) -> Listener:
    """Bind every ``smtp.listen`` address; a failure to bind closes what was opened.

    ``auth_failures`` counts failed AUTHs (the daemon's count, for every
    accepting process); by default a count of this process's own.

    ``serve=False`` binds without listening or accepting: the daemon does
    that when accept worker processes take the connections (until one
    serves the sockets, a client is refused rather than left waiting). ``sockets`` serves
    sockets already bound (by the daemon, in such a worker) instead, each
    with the ``smtp.listen`` address whose TLS, networks and AUTH rule apply.

    Clients are taken off the listen backlog only while a session is free
    (``relay.inbound.admission``); the others wait there, up to
    ``smtp.connection_wait``.
    """
    loop = asyncio.get_running_loop()
    current = settings()
    sessions = Sessions()
    quiet_emfile(loop)
    #: smtp.max_connections -> the sessions the descriptors allow (checked once per value)
    fitted = {current.max_connections: fit_sessions(current.max_connections)}
    tables = RelaySMTP.tables(handler)
    tls = TlsContexts(settings)
    auth = SmtpAuth(settings, handler.events.on_auth, failures=auth_failures)

    def limit() -> int:
        wanted = settings().max_connections
        if wanted not in fitted:
            fitted[wanted] = fit_sessions(wanted)
        return fitted[wanted]

    admission = Admission(
        limit,
        lambda: settings().connection_wait,
        lambda: handler.events.on_reject("too_many_connections"),
    )

    def factory_for(address: Endpoint) -> Callable[[], tuple[RelaySMTP, ssl.SSLContext | None]]:
        def denied() -> str:
            entry = _entry(settings(), address)
            return R_DENIED_HERE if entry is not None and entry.networks is not None else R_DENIED

        admit = gate(peer_filter(settings, address), sessions.refusals, limit, denied)
        needed = _auth_needed(settings, address)

        def factory() -> tuple[RelaySMTP, ssl.SSLContext | None]:
            s = settings()
            entry = _entry(s, address)
            context = tls.get(address)
            implicit = entry is not None and entry.tls == "implicit" and context is not None
            offered = entry is not None and entry.auth_mode != "none"
            protocol = RelaySMTP(
                handler,
                gate=admit,
                sessions=sessions.open,
                tables=tables,
                hostname=hostname,
                ident="Sluice",
                data_size_limit=s.max_message_size,
                enable_SMTPUTF8=True,
                decode_data=False,
                timeout=s.idle_timeout,
                loop=loop,
                on_lost=admission.release,
                tls_context=None if implicit else context,
                implicit_tls=implicit,
                auth=auth if offered else None,
                auth_require_tls=not (entry is not None and entry.allow_auth_without_tls),
                auth_needed=needed,
            )
            return protocol, context if implicit else None

        return factory

    backlog = listen_backlog(current.max_connections)

    def server(socks: list[socket.socket], address: Endpoint) -> AcceptServer:
        factory = factory_for(address)

        def serve_one(conn: socket.socket) -> None:
            task = loop.create_task(_session(loop, factory, conn, admission))
            sessions.starting.add(task)
            task.add_done_callback(sessions.starting.discard)

        return AcceptServer(socks, admission, serve_one, backlog)

    servers: list[AcceptServer] = []
    if sockets:
        endpoints = [ep for ep, _ in sockets]
        for ep, sock in sockets:
            servers.append(server([sock], ep))
            servers[-1].start_serving()
        return Listener(servers, sessions, endpoints=endpoints, admission=admission, server=server)
    endpoints = list(dict.fromkeys(current.endpoints))
    try:
        for ep in endpoints:
            servers.append(server(await bind_endpoint(ep.host, ep.port), ep))
    except OSError:
        for srv in servers:
            srv.close()
        raise
    if serve:
        for srv in servers:
            srv.start_serving()
    return Listener(
        servers, sessions, endpoints=endpoints, admission=admission, server=server, serve=serve
    )


async def _session(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], tuple[RelaySMTP, ssl.SSLContext | None]],
    conn: socket.socket,
    admission: Admission,
) -> None:
    """Start the session of an accepted client; its ``connection_lost`` frees its place.

    On an implicit-TLS listener the handshake comes first (asyncio's, bounded
    by ``_HANDSHAKE_TIMEOUT``); the greeting follows it.
    """
    try:
        protocol, context = factory()
        await loop.connect_accepted_socket(
            lambda: protocol,
            sock=conn,
            ssl=context,
            ssl_handshake_timeout=_HANDSHAKE_TIMEOUT if context is not None else None,
        )
    except Exception as exc:  # the client left at once (or the loop is closing)
        log.debug("could not start an SMTP session: %s", exc)
        admission.release()
        conn.close()
