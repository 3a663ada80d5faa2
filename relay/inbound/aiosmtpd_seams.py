"""Where Sluice reaches into aiosmtpd: every override of its ``SMTP`` class, in one place.

aiosmtpd's public surface is the handler hooks (``handle_MAIL`` and so on)
and ``SMTP``'s constructor options; Sluice's handler logic uses only those
and lives in ``relay.inbound.listener``. Some things Sluice needs happen
before, around or below any hook, so ``RelaySMTP`` overrides members of
aiosmtpd's ``SMTP``. They were written against **aiosmtpd 1.4.6**
(``CHECKED_AGAINST``) and are valid for the range pinned in pyproject.toml
(``PINNED``); tests/inbound/test_aiosmtpd_seams.py fails when the installed
aiosmtpd leaves that range, and checks each override against aiosmtpd's
source and through a socket.

Overridden (each with its own comment on what upstream does and why):

* ``__init__``: aiosmtpd's, for the options Sluice uses, with the three
  tables it builds by introspection (commands, AUTH mechanisms, the EHLO
  hook's form) built once per listener (``SmtpTables``) instead of once per
  connection, and with ``hostname`` always given, so that aiosmtpd never
  calls ``socket.getfqdn()`` (a blocking DNS lookup) per connection;
* ``_handle_client``: a gate (peer check, connection limit) runs before the
  greeting, which no public hook does;
* ``push``: a multi-line reply, and the replies to a pipelined group of
  commands, leave in one write instead of one per line;
* ``_getaddr``: MAIL/RCPT paths split by RFC 5321's grammar, not RFC 5322's
  parser (which raises on ``MAIL FROM:<``);
* ``connection_lost``: aiosmtpd's, then the listener is told the session's
  place against ``smtp.max_connections`` is free (no hook runs there);
* ``smtp_MAIL``: aiosmtpd's, with its own ``SIZE=`` check turned off for the
  call, so that ``RelayHandler.handle_MAIL`` judges ``SIZE=`` against the
  session's limit (``smtp.max_message_size``, or a policy's
  ``max_message_size``) and refuses with Sluice's ``552 5.3.4`` wording;
  aiosmtpd's check compares with ``data_size_limit``, which the previous MAIL
  set to the policy's limit, and answered without an enhanced code;
* ``smtp_DATA``: the body read in chunks (``relay.inbound.data``) instead of
  one ``readuntil`` per line, with aiosmtpd's cancellation on a lost
  connection kept (the writer closed, ``CancelledError`` re-raised);
* ``_authenticate``, ``auth_PLAIN``, ``auth_LOGIN``: aiosmtpd's mechanisms
  read the credentials, and ``relay.inbound.auth.SmtpAuth`` checks them
  (aiosmtpd calls its ``authenticator`` synchronously, on the event loop,
  where argon2 must never run).

Used without being overridden: ``_reader``/``_writer`` (the connection's
streams, set by ``_cb_client_connected``), ``StreamReader._buffer`` (is the
next command already here? ``push``), ``_set_post_data_state`` (the envelope
reset after DATA), ``_AuthMechAttr``, ``login_always_fail`` and ``syntax``
(the names ``__init__`` and ``smtp_DATA`` need), and the fact that
``_handle_client`` reads one command line at a time and answers in order,
which makes it safe for ``RelayHandler.handle_EHLO`` to offer PIPELINING.

Why not a different library: aiosmtpd is the maintained asyncio SMTP server
for Python; these overrides are the price of serving on the daemon's own
loop with Postfix-like cost per connection, and they stay few and checked.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    _AuthMechAttr,
    login_always_fail,
    syntax,
)

from relay.address import split_path
from relay.inbound.auth import SmtpAuth
from relay.inbound.data import Data, read_data

__all__ = [
    "CHECKED_AGAINST",
    "PINNED",
    "Gate",
    "MessageAcceptor",
    "RelaySMTP",
    "SmtpTables",
    "peer_ip",
]

#: the aiosmtpd release every override below was read against, line by line
CHECKED_AGAINST = "1.4.6"
#: the range pyproject.toml pins aiosmtpd to; the overrides hold within it
PINNED = ">=1.4.6,<1.5"

# aiosmtpd's own DATA replies, with RFC 3463 enhanced codes added.
R_NEED_RCPT = "503 5.5.1 Error: need RCPT command"
R_DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
R_START_DATA = "354 End data with <CR><LF>.<CR><LF>"
#: AUTH on a listener with ``auth: none`` (Postfix's wording)
R_AUTH_NOT_ENABLED = "503 5.5.1 Error: authentication not enabled"
#: aiosmtpd's answer to a session's fifth unrecognized command, before it closes...
AIOSMTPD_BOGUS_GOODBYE = "502 5.5.1 Too many unrecognized commands, goodbye."
#: ...said as a server that closes the channel must say it (RFC 5321 section 3.8:
#: 421), as Postfix's smtpd does at its error limit: a client then knows it was
#: closed on, and does not take a permanent 5xx for an answer about its mail.
R_TOO_MANY_BOGUS = "421 4.7.0 Too many unrecognized commands, closing the connection"


class MessageAcceptor(Protocol):
    """The handler's side of ``smtp_DATA``: store one message read in full, return the reply."""

    async def accept(self, session: Session, envelope: Envelope, data: Data) -> str: ...


#: (peer IP, sessions open) -> the reply refusing this client, or ``None`` to greet it
Gate = Callable[[str, int], str | None]


def peer_ip(session: Session) -> str:
    """The client's IP address as text (aiosmtpd's ``Session.peer`` is a socket address)."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


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
    """aiosmtpd's SMTP with a gate before the greeting, batched replies and chunked DATA.

    It overrides ten of aiosmtpd's members (``__init__``, ``_handle_client``,
    ``push``, ``_getaddr``, ``connection_lost``, ``smtp_MAIL``, ``smtp_DATA``,
    ``_authenticate``, ``auth_PLAIN``, ``auth_LOGIN``), each because no public hook runs early
    enough or cheaply enough, or off the event loop; the module docstring
    lists them and what else of aiosmtpd they rely on.
    """

    def __init__(
        self,
        handler: MessageAcceptor,
        *,
        gate: Gate,
        sessions: set[RelaySMTP],
        tables: SmtpTables,
        hostname: str,
        ident: str,
        data_size_limit: int,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
        enable_SMTPUTF8: bool = True,
        decode_data: bool = False,
        on_lost: Callable[[], None] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        auth: SmtpAuth | None = None,
        auth_require_tls: bool = True,
        auth_needed: Callable[[str], bool] | None = None,
    ) -> None:
        """Set up one session, as aiosmtpd's ``__init__`` would, without its introspection.

        aiosmtpd 1.4.6: ``SMTP.__init__`` validates its options, resolves
        ``hostname`` with ``socket.getfqdn()`` when none is given (a blocking
        lookup on the event loop, per connection) and builds three tables
        by introspection (``SmtpTables``). Sluice always passes ``hostname``
        (resolved once, in a thread, by the daemon) and builds the tables once
        per listener, so this is aiosmtpd's ``__init__`` with
        ``tls_context=None``, ``auth_required=False``, ``auth_require_tls=True``,
        no authenticator/auth_callback/exclusions, ``command_call_limit=None``
        and ``proxy_protocol_timeout=None``. Keep in step with aiosmtpd:
        test_aiosmtpd_seams.py::test_init_matches_aiosmtpd compares the two.

        Args:
            handler: the hooks, and ``accept`` for a whole message.
            gate: asked before the greeting whether to serve this client.
            sessions: the listener's open sessions; this one is in it while served.
            tables: ``RelaySMTP.tables(handler)``, built once per listener.
            hostname: the name in the greeting and the EHLO reply.
            ident: the greeting's software name.
            data_size_limit: the largest message accepted (``552`` beyond).
            timeout: seconds of client silence before the connection closes.
            loop: the daemon's event loop.
            enable_SMTPUTF8: offer SMTPUTF8 (RFC 6531).
            decode_data: aiosmtpd's option; Sluice keeps bytes.
            on_lost: called once when the connection is gone (frees its place
                against ``smtp.max_connections``, ``relay.inbound.admission``).
            tls_context: offered by STARTTLS (aiosmtpd's option).
            implicit_tls: the connection is TLS from its first byte (so AUTH
                needs no STARTTLS).
            auth: checks AUTH; ``None``: AUTH is not offered.
            auth_require_tls: aiosmtpd's option: AUTH only after STARTTLS.
            auth_needed: (client IP) -> whether it must AUTH before MAIL
                (aiosmtpd's ``auth_required``, decided per client).
        """
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
        self.tls_context = tls_context
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
        self._auth_require_tls = auth_require_tls and not implicit_tls
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
        self._on_lost = on_lost
        self._gate = gate
        self._open = sessions
        #: the task serving this session (waited for at shutdown)
        self.task: asyncio.Task[Any] | None = None
        #: cleared while a message is being stored and answered: a shutdown
        #: waits for it, so a client never hears 421 for mail that was committed
        self.between_messages = asyncio.Event()
        self.between_messages.set()
        #: continuation lines of a multi-line reply, sent with its last line (``push``)
        self._held_lines: list[bytes] = []
        self._smtp_auth = auth
        self._auth_needed = auth_needed
        self._implicit_tls = implicit_tls

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

        aiosmtpd 1.4.6 writes every reply line on its own and drains: EHLO's
        six lines were six writes, six loopback segments and six wake-ups of
        the client, and a pipelining client's ``MAIL``/``RCPT``/``DATA`` got
        three. Here a line is held, and written with the next one that is
        not, when

        * it continues a multi-line reply (``250-...``, RFC 5321 section
          4.2.1): no client acts before the reply's last line; or
        * it is a plain ``250`` and the client's next command is already in
          the input buffer (RFC 2920 section 3.1: a server may hold the
          replies to a pipelined group until it must wait for more input,
          as Postfix's smtpd does). Any other reply (a refusal, ``354``,
          ``221``, a ``421`` before a close) is written at once with
          whatever was held, so nothing is held when the server stops
          reading or closes.

        aiosmtpd's ``502`` before it closes on a client of unrecognized
        commands goes out as ``R_TOO_MANY_BOGUS``, a ``421``.
        """
        if status == AIOSMTPD_BOGUS_GOODBYE:
            status = R_TOO_MANY_BOGUS
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

        aiosmtpd 1.4.6's ``smtp_MAIL``/``smtp_RCPT`` parse the path with this
        before any ``handle_*`` hook, using RFC 5322's header parser
        (``email._header_value_parser``), which raises ``IndexError`` on an
        unterminated ``<`` (a ``451`` and a traceback per command), takes
        comments and bare words, and rewrites quoting. This one never raises
        and returns the path as sent; ``handle_MAIL``/``handle_RCPT`` judge it
        and give the reason in a 5xx. It also skips aiosmtpd's
        ``typing.Protocol`` class created on every call (6% of the accept CPU).
        """
        return split_path(arg)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        """aiosmtpd's MAIL, with Sluice (not aiosmtpd) refusing a ``SIZE=`` over the limit.

        aiosmtpd 1.4.6's ``smtp_MAIL`` refuses ``SIZE=`` above
        ``data_size_limit`` itself, before any hook, with ``552 Error: message
        size exceeds fixed maximum message size`` (no enhanced status code).
        ``data_size_limit`` is the session's DATA limit, which
        ``RelayHandler.handle_MAIL`` sets per transaction (a policy's
        ``max_message_size``), so from a session's second MAIL aiosmtpd
        answered in its words what the first MAIL had Sluice answer in its
        own. aiosmtpd skips its check when the limit is falsy: it is 0 for
        this call, the hook checks ``SIZE=`` (``552 5.3.4``), and the limit is
        put back if the hook did not set one.
        """
        limit = self.data_size_limit
        self.data_size_limit = 0
        try:
            await super().smtp_MAIL(arg)
        finally:
            if not self.data_size_limit:
                self.data_size_limit = limit

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA with the body read in chunks (see ``relay.inbound.data``).

        aiosmtpd 1.4.6 reads the body with one ``readuntil(b"\\r\\n")`` per
        line, answers ``500`` to a line over 1,000 octets, and then calls
        ``handle_DATA``. Here the body is read in chunks of any line length,
        handed whole to the handler's ``accept``, and the envelope is reset
        with aiosmtpd's own ``_set_post_data_state``. The checks before the
        ``354`` are aiosmtpd's, in its order.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None and self.session is not None
        if not self.envelope.rcpt_tos:
            await self.push(R_NEED_RCPT)
            return
        if arg:
            await self.push(R_DATA_SYNTAX)
            return
        await self.push(R_START_DATA)
        try:
            data = await read_data(self._reader, size_limit=self.data_size_limit)
        except asyncio.CancelledError:
            # aiosmtpd's connection_lost/eof_received cancel the session's task;
            # like aiosmtpd's own smtp_DATA, close the writer and let it end.
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            self._writer.close()
            return
        self.between_messages.clear()
        try:
            if data.error is not None:
                status = data.error
            else:
                status = await self._relay.accept(self.session, self.envelope, data)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(status)
        finally:
            self.between_messages.set()

    async def _handle_client(self) -> None:
        """Ask the gate before the greeting; serve the session while it counts as open.

        aiosmtpd 1.4.6's ``_handle_client`` (the task ``connection_made``
        starts) sends the ``220`` greeting first thing and then reads
        commands; the only hook before it is ``handle_PROXY``, and only with
        the PROXY protocol. A client outside ``smtp.allowed_networks``, or
        one too many, must hear a refusal instead of a greeting (RFC 5321
        section 3.1: a server may answer ``554`` or ``421`` in place of the
        ``220``), so the gate runs here, before aiosmtpd's method.
        """
        assert self.session is not None
        refusal = self._gate(peer_ip(self.session), len(self._open))
        if refusal is not None:
            await self.close_with(refusal)
            return
        if self._auth_needed is not None:
            self._auth_required = self._auth_needed(peer_ip(self.session))
        if self._implicit_tls and self.transport is not None:
            # As aiosmtpd fills it after STARTTLS: what was negotiated (the Received line's "S").
            self.session.ssl = {"cipher": self.transport.get_extra_info("cipher")}
        self._open.add(self)
        self.task = asyncio.current_task()
        try:
            await super()._handle_client()
        finally:
            self._open.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """aiosmtpd's ``connection_lost``, then the listener is told a session slot is free.

        aiosmtpd 1.4.6's ``connection_lost`` (asyncio calls it exactly once per
        connection, however it ends) clears the transport and cancels the
        session's task; no hook follows it. A session counts against
        ``smtp.max_connections`` from its ``accept()`` until here, whether or
        not its task ever ran, so the place is given back here, not when the
        task ends.
        """
        try:
            super().connection_lost(exc)
        finally:
            if self._on_lost is not None:
                on_lost, self._on_lost = self._on_lost, None
                on_lost()

    async def close_with(self, reply: str) -> None:
        """Send ``reply`` (a ``421`` or ``554``) and close, whatever state the session is in."""
        try:
            await self.push(reply)
        except (ConnectionError, RuntimeError):
            pass
        if self.transport is not None:
            self.transport.close()

    @property
    def offers_auth(self) -> bool:
        """Whether this listener offers AUTH at all (``RelayHandler.handle_EHLO`` asks)."""
        return self._smtp_auth is not None

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """Hand the credentials aiosmtpd's mechanism read back to ``auth_PLAIN``/``auth_LOGIN``.

        aiosmtpd 1.4.6's ``auth_PLAIN``/``auth_LOGIN`` end by calling this,
        synchronously, with a ``LoginPassword``; its ``authenticator`` would
        check the password right here, on the event loop. Here nothing is
        checked: the unchecked result carries the credentials to ``_checked``.
        """
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, _: object, args: list[str]) -> AuthResult:
        """aiosmtpd's PLAIN (RFC 4616) reads the credentials; ``SmtpAuth`` checks them.

        aiosmtpd 1.4.6's ``auth_PLAIN`` decodes the response and returns what
        ``_authenticate`` says; that is the unchecked credentials here, which
        are checked (off the loop) before the result goes back to ``smtp_AUTH``.
        """
        return await self._checked("PLAIN", await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: object, args: list[str]) -> AuthResult:
        """aiosmtpd's LOGIN reads the credentials; ``SmtpAuth`` checks them.

        aiosmtpd 1.4.6's ``auth_LOGIN`` asks for the user name and password
        (two 334 challenges) and returns what ``_authenticate`` says; checked
        here as for ``auth_PLAIN``.
        """
        return await self._checked("LOGIN", await super().auth_LOGIN(_, args))

    async def _checked(self, mechanism: str, read: AuthResult) -> AuthResult:
        if read.success or read.handled or not isinstance(read.auth_data, LoginPassword):
            return read  # aiosmtpd answered already (bad base64, "*")
        if self._smtp_auth is None:
            return AuthResult(success=False, handled=False, message=R_AUTH_NOT_ENABLED)
        assert self.session is not None
        credentials = read.auth_data
        name, reply = await self._smtp_auth.authenticate(
            peer_ip(self.session), mechanism, credentials.login, credentials.password
        )
        if name is None and reply.startswith("421"):
            await self.close_with(reply)  # locked out: nothing more on this connection
            return AuthResult(success=False, handled=True)
        if name is None:
            return AuthResult(success=False, handled=False, message=reply)
        # Part of the contract with per-user policies: session.auth_data is the user's name.
        return AuthResult(success=True, auth_data=name, message=reply)
