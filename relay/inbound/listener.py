"""The SMTP listener: accept mail from local applications into the spool.

The handler's only dependency is the spool. ``250`` is returned only after
``Spool.enqueue`` has committed (WAL, ``synchronous=FULL``); any failure
before that is answered ``451 4.3.0`` so that the client keeps the message
(RFC 5321 § 4.1.1.4: a message answered 4xx is never delivered by us).

Servers are created with ``loop.create_server`` on the daemon's own loop,
never aiosmtpd's threaded ``Controller`` (two loops would share the spool).
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session, _AuthMechAttr, login_always_fail, syntax

from relay.address import NULL_PATH, address_problem, needs_smtputf8, split_path
from relay.config import Endpoint, SmtpSettings
from relay.errors import SpoolError
from relay.inbound.data import Data, read_data
from relay.inbound.descriptors import Throttle, fit_sessions, quiet_emfile
from relay.message import bare_line_ending, extract_subject
from relay.received import received_header
from relay.store.spool import NewMessage, Spool, new_queue_id

__all__ = [
    "AcceptEvents",
    "Listener",
    "RelayHandler",
    "RelaySMTP",
    "Sessions",
    "SmtpTables",
    "start_listeners",
]

log = logging.getLogger("sluice.smtp")

# Reply texts, named so that tests and docs can refer to them. All ASCII:
# a reply is sent as UTF-8 only to a client that asked for SMTPUTF8, and
# tests/inbound/test_replies.py checks every one.
R_MAIL_OK = "250 2.1.0 Sender OK"
R_RCPT_OK = "250 2.1.5 Recipient OK"
R_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients (limit {limit}); send the rest in a new message"
R_BAD_RCPT = "501 5.1.3 Bad recipient address syntax: {reason}"
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
R_INTERNAL = "451 4.3.0 Internal error; try again later"
R_QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
R_DENIED = "554 5.7.1 Access denied: {peer} is not in smtp.allowed_networks"
R_SHUTDOWN = "421 4.3.2 Service shutting down, try again later"

Clock = Callable[[], float]


class AcceptEvents(Protocol):
    """Where the listener reports what it accepted and refused.

    ``relay.metrics.Metrics`` in the daemon; in an accept worker process, the
    channel to the daemon (``relay.inbound.workers``), which also wakes its scheduler.
    """

    def on_accept(self, size: int) -> None: ...

    def on_reject(self, reason: str) -> None: ...


class _NoEvents:
    def on_accept(self, size: int) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass


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
    ) -> None:
        self._events = events or _NoEvents()
        self._rng = random.Random()  # queue IDs (seeded from os.urandom)
        self._spool = spool
        self._settings = settings
        self._hostname = hostname
        self._clock = clock

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
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

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
                log.warning("rejected message from %s: bare line ending", _peer_ip(session))
                self._events.on_reject("bare_line_ending")
                return R_BARE_LF.format(offset=offset)
            crlf_only = True
        now = self._clock()
        queue_id = new_queue_id(now, self._rng)
        protocol = "ESMTP" if session.extended_smtp else "SMTP"
        if envelope.smtp_utf8:
            protocol = "UTF8SMTP"  # RFC 6531 section 3.7.3
        header = received_header(
            helo=session.host_name,
            client_ip=_peer_ip(session),
            hostname=self._hostname,
            queue_id=queue_id,
            protocol=protocol,
            recipients=list(envelope.rcpt_tos),
            now=now,
            utf8=envelope.smtp_utf8,
        )
        message = NewMessage(
            queue_id=queue_id,
            sender="" if envelope.mail_from == NULL_PATH else (envelope.mail_from or ""),
            recipients=list(envelope.rcpt_tos),
            data=header + content,
            subject=extract_subject(content),
            received_at=now,
            client=_peer_ip(session),
            helo=session.host_name or "",
            # The Received header is CRLF-only by construction.
            crlf_only=crlf_only,
        )
        try:
            await self._spool.enqueue(message)
        except SpoolError as exc:
            log.error("could not spool message from %s: %s", message.client, exc)
            self._events.on_reject("spool_error")
            return R_SPOOL_ERROR
        # Counted and logged just after the 250 is written (the next turn of
        # the loop), not before: the client waits for its reply, not for our
        # log line. The message is already committed either way.
        asyncio.get_running_loop().call_soon(self._accepted, message)
        return R_QUEUED.format(queue_id=queue_id)

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


def _peer_ip(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


@dataclass
class Sessions:
    """The open sessions of one listener (of one process), and what refusing them logs."""

    open: set[RelaySMTP] = field(default_factory=set)
    refusals: Throttle = field(default_factory=Throttle)


@dataclass(frozen=True)
class SmtpTables:
    """What aiosmtpd's ``SMTP.__init__`` looks up by introspection, for one class and handler.

    aiosmtpd 1.4 builds its command table (``dir``), its AUTH-mechanism table
    (``inspect.getmembers`` over the server and the handler, which evaluates
    every attribute) and the EHLO hook's form (``inspect.signature``) again
    for every connection: about 0.4 ms of CPU per connection here, as much as
    the rest of a small message's accept. They depend only on the server's
    class and the handler, so ``RelaySMTP.tables`` builds them once per
    listener; each session then only binds the names it finds here.
    """

    #: command ("MAIL") -> method name ("smtp_MAIL")
    commands: tuple[tuple[str, str], ...]
    #: mechanism ("LOGIN") -> (attribute name, defined on the server rather than the handler)
    auth: tuple[tuple[str, str, bool], ...]
    #: hook ("RCPT") -> handler attribute name ("handle_RCPT")
    hooks: tuple[tuple[str, str], ...]
    #: aiosmtpd's ``_ehlo_hook_ver``: None, "old" (4 arguments) or "new" (5)
    ehlo_hook_ver: str | None


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with a peer check and a connection limit before the greeting.

    It overrides four of aiosmtpd's members, each because no public hook runs
    early enough or cheaply enough; tests/inbound/test_aiosmtpd_seams.py
    fails if an aiosmtpd upgrade changes what they rely on:

    * ``__init__``: aiosmtpd's, for the options Sluice uses, with the
      introspected tables built once per listener (``SmtpTables``) instead of
      once per connection; the test compares every attribute with an
      unmodified aiosmtpd instance's;
    * ``_handle_client``: the greeting is sent at its start, and nothing
      public runs before it (``handle_PROXY`` only with the PROXY protocol);
    * ``_getaddr``: ``smtp_MAIL`` and ``smtp_RCPT`` parse the path with it
      before any ``handle_*`` hook, with RFC 5322's parser, which raises
      ``IndexError`` on ``MAIL FROM:<`` and drops comments;
    * ``push``: a multi-line reply (EHLO's), and the replies to a pipelined
      group of commands, leave in one write, not one per line.

    ``smtp_DATA`` (a public command method) is replaced to read the body in
    chunks. It uses, without overriding them, ``_reader``/``_writer`` (the
    connection's streams) and ``_set_post_data_state`` (the reset after DATA).
    """

    def __init__(
        self,
        handler: RelayHandler,
        *,
        allowed: Callable[[str], bool],
        sessions: Sessions,
        max_connections: int,
        tables: SmtpTables,
        hostname: str,
        ident: str,
        data_size_limit: int,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        enable_SMTPUTF8: bool = True,
        decode_data: bool = False,
    ) -> None:
        # aiosmtpd 1.4.6's SMTP.__init__ with tls_context=None, auth_required=False,
        # auth_require_tls=True, no authenticator/auth_callback/exclusions,
        # command_call_limit=None, proxy_protocol_timeout=None; only the three
        # introspected tables come from ``tables``. Keep in step with aiosmtpd:
        # test_aiosmtpd_seams.py::test_init_matches_aiosmtpd compares the two.
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname
        self.tls_context = None
        self.require_starttls = None
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._auth_callback = login_always_fail
        self._authenticator = None
        self._auth_required = False
        self._auth_methods = {
            mech: _AuthMechAttr(getattr(self if builtin else handler, name), builtin)
            for mech, name, builtin in tables.auth
        }
        self._handle_hooks = {hook: getattr(handler, name) for hook, name in tables.hooks}
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {command: getattr(self, name) for command, name in tables.commands}
        self._enforce_call_limit = False

        self._relay = handler
        self._allowed = allowed
        self._sessions = sessions
        self._max_connections = max_connections
        #: the task serving this session (waited for at shutdown)
        self.task: asyncio.Task[Any] | None = None
        #: continuation lines of a multi-line reply, sent with its last line (``push``)
        self._held_lines: list[bytes] = []

    @classmethod
    def tables(cls, handler: object) -> SmtpTables:
        """aiosmtpd's introspection, once (the same expressions as its ``__init__``)."""
        auth = []
        for obj in (cls, handler):
            for name, member in inspect.getmembers(obj):
                if name.startswith("auth_"):
                    mech = getattr(
                        member,
                        "__auth_mechanism_name__",
                        name.replace("auth_", "").replace("__", "-"),
                    )
                    auth.append((mech, name, obj is cls))
        hooks = tuple(
            (m.replace("handle_", ""), m) for m in dir(handler) if m.startswith("handle_")
        )
        ehlo = getattr(handler, "handle_EHLO", None)
        ehlo_ver: str | None = None
        if ehlo is not None:
            count = len(inspect.signature(ehlo).parameters)
            if count not in (4, 5):
                raise RuntimeError("Unsupported EHLO Hook")
            ehlo_ver = "old" if count == 4 else "new"
        # A dict, as aiosmtpd's: a later member of the same mechanism name wins.
        mechs = {mech: (mech, name, builtin) for mech, name, builtin in auth}
        commands = tuple((m.replace("smtp_", ""), m) for m in dir(cls) if m.startswith("smtp_"))
        return SmtpTables(commands, tuple(mechs.values()), hooks, ehlo_ver)

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd's ``push``, except that replies a client has not yet waited for wait too.

        aiosmtpd writes every reply line on its own: EHLO's six lines were
        six writes, six loopback segments and six wake-ups of the client, and
        a pipelining client's ``MAIL``/``RCPT``/``DATA`` got three. Here a
        line is held, and written with the next one that is not, when

        * it continues a multi-line reply (``250-...``, RFC 5321 section
          4.2.1): no client acts before the reply's last line; or
        * it is a plain ``250`` and the client's next command is already in
          the input buffer (RFC 2920 section 3.1: a server may hold the
          replies to a pipelined group until it must wait for more input,
          as Postfix's smtpd does). Any other reply (a refusal, ``354``,
          ``221``, a ``421`` before a close) is written at once with
          whatever was held, so nothing is held when the server stops
          reading or closes.
        """
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        line = response + b"\r\n"
        if response[3:4] == b"-" or (
            response.startswith(b"250 ") and b"\n" in self._reader._buffer  # type: ignore[attr-defined]
        ):
            self._held_lines.append(line)
            return
        if self._held_lines:
            self._held_lines.append(line)
            line = b"".join(self._held_lines)
            self._held_lines.clear()
        self._writer.write(line)
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split ``<path> parameters`` by RFC 5321's grammar (``relay.address.split_path``).

        Replaces aiosmtpd 1.4's RFC 5322 parsing, which raises on an
        unterminated ``<`` (a ``451`` and a traceback per command), takes
        comments and bare words, and rewrites quoting. This one never raises
        and returns the path as sent; ``handle_MAIL``/``handle_RCPT`` judge it
        and give the reason in a 5xx. It also skips aiosmtpd's
        ``typing.Protocol`` class created on every call (6% of the accept CPU).
        """
        return split_path(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the body read in chunks (see ``relay.inbound.data``)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(self._reader, size_limit=self.data_size_limit)
        except asyncio.CancelledError:
            # The connection was lost during DATA (aiosmtpd cancels on EOF).
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        if data.error is not None:
            status = data.error
        else:
            status = await self._relay.accept(self.session, self.envelope, data)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _handle_client(self) -> None:
        """Refuse a peer outside ``allowed_networks``, or one too many, instead of greeting it."""
        assert self.session is not None
        ip = _peer_ip(self.session)
        if not self._allowed(ip):
            log.warning("refused connection from %s: not in smtp.allowed_networks", ip)
            await self._refuse(R_DENIED.format(peer=ip))
            return
        sessions = self._sessions
        if len(sessions.open) >= self._max_connections:
            # Postfix's smtpd process limit, with a reply instead of a wait in
            # the backlog: the client retries later (RFC 5321 section 3.8).
            suppressed = sessions.refusals.take()
            if suppressed is not None:
                log.warning(
                    "refused connection from %s: smtp.max_connections (%d) reached%s",
                    ip,
                    self._max_connections,
                    f" ({suppressed} more since the last message)" if suppressed else "",
                )
            await self._refuse(R_TOO_MANY_CONNECTIONS.format(limit=self._max_connections))
            return
        sessions.open.add(self)
        self.task = asyncio.current_task()
        try:
            await super()._handle_client()
        finally:
            sessions.open.discard(self)

    async def _refuse(self, reply: str) -> None:
        try:
            await self.push(reply)
        except (ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()

    async def say_goodbye(self) -> None:
        """Tell the client we are stopping (RFC 5321 section 3.8) and close."""
        await self._refuse(R_SHUTDOWN)


def peer_filter(settings: Callable[[], SmtpSettings]) -> Callable[[str], bool]:
    def allowed(ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        return any(addr in net for net in settings().allowed_networks)

    return allowed


@dataclass
class Listener:
    """The SMTP servers of one daemon and the sessions they hold open."""

    servers: list[asyncio.Server]
    sessions: Sessions = field(default_factory=Sessions)
    #: the configured address of each server, and how to make a session (for ``rebind``)
    endpoints: list[Endpoint] = field(default_factory=list)
    factory: Callable[[], RelaySMTP] | None = None
    #: False when accept worker processes serve these sockets (``relay.inbound.workers``)
    serve: bool = True
    _retired: list[asyncio.Server] = field(default_factory=list)

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
        assert self.factory is not None, "rebind needs the listener from start_listeners"
        loop = asyncio.get_running_loop()
        current = dict(zip(self.endpoints, self.servers, strict=True))
        added = [ep for ep in endpoints if ep not in current]
        opened: list[asyncio.Server] = []
        try:
            for ep in added:
                opened.append(
                    await loop.create_server(
                        self.factory, host=ep.host, port=ep.port, start_serving=self.serve
                    )
                )
        except OSError:
            for server in opened:
                server.close()
            raise
        fresh = dict(zip(added, opened, strict=True))
        removed = [s for ep, s in current.items() if ep not in endpoints]
        self.endpoints = list(dict.fromkeys(endpoints))
        self.servers = [current.get(ep) or fresh[ep] for ep in self.endpoints]
        for server in removed:
            server.close()
        self._retired.extend(removed)

    async def aclose(self, grace: float) -> None:
        """Stop accepting, let sessions finish for ``grace`` seconds, then 421 the rest."""
        self.stop_accepting()
        for server in self._retired:
            server.close()
        self.servers.extend(self._retired)
        self._retired.clear()
        tasks = [t for s in self.sessions.open if (t := s.task) is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for session in list(self.sessions.open):
            await session.say_goodbye()
        for server in self.servers:
            await server.wait_closed()


async def start_listeners(
    settings: Callable[[], SmtpSettings],
    handler: RelayHandler,
    *,
    hostname: str,
    serve: bool = True,
    sockets: Sequence[socket.socket] = (),
) -> Listener:
    """Bind every ``smtp.listen`` address; a failure to bind closes what was opened.

    ``serve=False`` binds without listening or accepting: the daemon does
    that when accept worker processes take the connections (until one
    serves the sockets, a client is refused rather than left waiting). ``sockets`` serves
    sockets already bound (by the daemon, in such a worker) instead.
    """
    loop = asyncio.get_running_loop()
    current = settings()
    sessions = Sessions()
    allowed = peer_filter(settings)
    quiet_emfile(loop)
    #: smtp.max_connections -> the sessions the descriptors allow (checked once per value)
    fitted = {current.max_connections: fit_sessions(current.max_connections)}
    tables = RelaySMTP.tables(handler)

    def factory() -> RelaySMTP:
        s = settings()
        if s.max_connections not in fitted:
            fitted[s.max_connections] = fit_sessions(s.max_connections)
        return RelaySMTP(
            handler,
            allowed=allowed,
            sessions=sessions,
            max_connections=fitted[s.max_connections],
            tables=tables,
            hostname=hostname,
            ident="Sluice",
            data_size_limit=s.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=s.idle_timeout,
            loop=loop,
        )

    servers: list[asyncio.Server] = []
    if sockets:
        for sock in sockets:
            servers.append(await loop.create_server(factory, sock=sock))
        return Listener(servers, sessions, factory=factory)
    endpoints = list(dict.fromkeys(current.listen))
    try:
        for ep in endpoints:
            servers.append(
                await loop.create_server(factory, host=ep.host, port=ep.port, start_serving=serve)
            )
    except OSError:
        for server in servers:
            server.close()
        raise
    return Listener(servers, sessions, endpoints=endpoints, factory=factory, serve=serve)
