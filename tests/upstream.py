"""A real SMTP upstream for tests: aiosmtpd on a loopback port 0, with scripted faults.

Faults are plain attributes, set by the test before (or while) Sluice talks
to it::

    upstream.reply["RCPT:bad@example.com"] = "550 5.1.1 no such user"
    upstream.reply["DATA"] = "451 4.3.0 try again in 2 minutes"
    upstream.hang.add("DATA")   # never answer the final dot
    upstream.drop.add("MAIL")   # close the connection on MAIL
    upstream.refuse = True      # stop listening altogether (connection refused)
    upstream.reply["DATA:start"] = "554 5.5.1 no"  # answer the DATA command itself
    upstream.reply["RCPT:far@example.com"] = "251 2.1.5 will forward"  # accepted
    upstream.on_data = fill_the_disk  # awaited after a message is kept, before its 250

PIPELINING (RFC 2920): ``pipelining=True`` offers it in the EHLO reply
(aiosmtpd reads pipelined commands anyway, it just does not say so).
``hold_replies_until_data=True`` answers as Postfix does, and as RFC 2920
§ 3.2 rule 2 suggests: the replies to MAIL and RCPT are held back and sent
together with DATA's, in one write. A client that waits for MAIL's reply
before it sends RCPT therefore never gets it (and times out): a transaction
that completes against it was pipelined. ``data_without_rcpt=True`` answers
DATA with 354 even when every RCPT was refused, and records what came before
the final dot in ``orphan_bodies`` (RFC 2920 § 3.1: it should be nothing).

Everything it accepted is in ``upstream.messages``; ``await upstream.wait_for(n)``
waits (with a deadline) until ``n`` messages have arrived.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Received", "TestUpstream"]


@dataclass(frozen=True)
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str]
    tls: bool
    login: str | None
    #: time.monotonic() when the message arrived
    at: float = field(default_factory=time.monotonic)


@dataclass
class TestUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    #: "VERB" or "VERB:address" -> reply text
    reply: dict[str, str] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    drop: set[str] = field(default_factory=set)
    #: like ``drop``, but each entry fires once
    drop_once: set[str] = field(default_factory=set)
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    #: implicit TLS (encryption: tls) when set
    tls_context: ssl.SSLContext | None = None
    #: STARTTLS offered when set
    starttls_context: ssl.SSLContext | None = None
    #: username -> password; AUTH required when set
    users: dict[str, str] | None = None
    #: mechanism -> checker, e.g. {"XOAUTH2": fn(user, token) -> bool}; a str it
    #: returns is a refusal, sent as the reply
    extra_auth: dict[str, Any] = field(default_factory=dict)
    #: offer PIPELINING in the EHLO reply
    pipelining: bool = False
    #: hold MAIL and RCPT replies back until DATA, then send them with its reply
    hold_replies_until_data: bool = False
    #: 354 to DATA even with no accepted recipient (then 554 after the dot)
    data_without_rcpt: bool = False
    #: what came between such a 354 and its final dot, per transaction
    orphan_bodies: list[bytes] = field(default_factory=list)
    #: awaited with each accepted message after it is recorded, before its 250 goes out
    #: (so a test can make something happen between the delivery and Sluice's hearing of it)
    on_data: Callable[[Received], Awaitable[None]] | None = None
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _transports: set[asyncio.BaseTransport] = field(default_factory=set)

    __test__ = False  # not a pytest class

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> TestUpstream:
        loop = asyncio.get_running_loop()
        upstream = self

        def factory() -> SMTP:
            kwargs: dict[str, Any] = {}
            if upstream.starttls_context is not None:
                kwargs.update(tls_context=upstream.starttls_context, require_starttls=False)
            if upstream.users is not None:
                kwargs.update(
                    authenticator=upstream._authenticate,
                    auth_required=True,
                    auth_require_tls=False,
                )
            with warnings.catch_warnings():
                # "AUTH without requiring TLS": on purpose, so tests can check that
                # Sluice itself refuses to send credentials in clear.
                warnings.simplefilter("ignore", UserWarning)
                return _FaultySMTP(
                    _Handler(upstream),
                    upstream,
                    hostname="upstream.test",
                    loop=loop,
                    enable_SMTPUTF8=True,
                    **kwargs,
                )

        self._server = await loop.create_server(
            factory, host=self.host, port=self.port, ssl=self.tls_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut open sessions (the provider "goes down")."""
        self._release.set()
        if self._server is not None:
            self._server.close()
            for transport in self._transports:
                # uvloop's transports are not asyncio.Transport subclasses, but abort too
                cast(asyncio.Transport, transport).abort()
            self._transports.clear()
            await self._server.wait_closed()
            self._server = None

    async def restart(self) -> None:
        """Listen again on the same port (the provider "comes back")."""
        self._release = asyncio.Event()
        await self.start()

    # ---------------------------------------------------------------- waiting

    async def wait_for(self, count: int, within: float = 15.0) -> list[Received]:
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.messages) >= count)
        return self.messages

    async def _record(self, msg: Received) -> None:
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.users is not None
        if isinstance(data, LoginPassword):
            user = data.login.decode()
            ok = self.users.get(user) == data.password.decode()
            return AuthResult(success=ok, handled=False, auth_data=user if ok else None)
        return AuthResult(success=False, handled=False)


class _FaultySMTP(SMTP):
    def __init__(self, handler: _Handler, upstream: TestUpstream, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._upstream = upstream
        #: replies held back (``hold_replies_until_data``), CRLF included
        self._held: list[bytes] | None = None
        #: held replies to send in one write with the next reply
        self._flush: list[bytes] = []

    async def push(self, status: Any) -> None:
        line = (status.encode() if isinstance(status, str) else bytes(status)) + b"\r\n"
        if self._held is not None:
            self._held.append(line)
            return
        if self._flush:
            group, self._flush = self._flush, []
            self._writer.write(b"".join(group) + line)
            await self._writer.drain()
            return
        await super().push(status)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._upstream.hold_replies_until_data and self._held is None:
            self._held = []
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self._held is not None:
            self._flush, self._held = self._held, None
        up = self._upstream
        if (fault := up.reply.get("DATA:start")) is not None:
            await self.push(fault)
            return
        if up.data_without_rcpt and self.envelope is not None and not self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            body = bytearray()
            for _ in range(100_000):  # bounded: a test message is far shorter
                line = await self._reader.readuntil(b"\r\n")
                if line == b".\r\n":
                    break
                body += line
            up.orphan_bodies.append(bytes(body))
            self.envelope = self._create_envelope()
            # RFC 2920 § 3.2 rule 4: nothing is sent anywhere.
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await super().smtp_DATA(arg)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and self.transport is None:
            self._upstream.connections += 1
            self._upstream._transports.add(transport)
        super().connection_made(transport)


class _Handler:
    def __init__(self, upstream: TestUpstream) -> None:
        self.up = upstream

    async def _fault(self, server: SMTP, verb: str, key: str) -> str | None:
        up = self.up
        if verb in up.hang or key in up.hang:
            await up._release.wait()
            return "421 4.3.0 released"
        once = verb if verb in up.drop_once else key if key in up.drop_once else None
        if once is not None:
            up.drop_once.discard(once)
        if once is not None or verb in up.drop or key in up.drop:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "421 4.3.0 dropped"
        return up.reply.get(key) or up.reply.get(verb)

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        """RFC-less but common: base64("user=U^Aauth=Bearer T^A^A"), checked by ``extra_auth``."""
        checker = self.up.extra_auth.get("XOAUTH2")
        if checker is None or len(args) < 2:
            return AuthResult(success=False, handled=False)
        try:
            raw = base64.b64decode(args[1]).decode()
        except ValueError:
            return AuthResult(success=False, handled=False)
        fields = dict(p.split("=", 1) for p in raw.split("\x01") if "=" in p)
        user = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        verdict = checker(user, token)
        if isinstance(verdict, str):  # a refusal in the checker's words (a reply that echoes)
            return AuthResult(success=False, handled=False, message=verdict)
        ok = bool(verdict)
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves it to a new-style hook
        if not self.up.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        fault = await self._fault(server, "RSET", "RSET")
        return fault if fault is not None else "250 OK"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if (fault := await self._fault(server, "MAIL", f"MAIL:{address}")) is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = await self._fault(server, "RCPT", f"RCPT:{address}")
        if fault is None or fault.startswith(("250", "251")):
            # A scripted 250/251 ("251 User not local; will forward") accepts
            # the recipient, as a real server's would (RFC 5321 section 3.4).
            envelope.rcpt_tos.append(address)
        return fault or "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (fault := await self._fault(server, "DATA", "DATA")) is not None:
            return fault
        login = session.auth_data if isinstance(session.auth_data, str) else None
        received = Received(
            sender="" if envelope.mail_from == "<>" else (envelope.mail_from or ""),
            recipients=list(envelope.rcpt_tos),
            data=envelope.original_content or b"",
            mail_options=list(envelope.mail_options),
            tls=session.ssl is not None
            or (
                server.transport is not None
                and server.transport.get_extra_info("ssl_object") is not None
            ),
            login=login,
        )
        await self.up._record(received)
        if self.up.on_data is not None:
            await self.up.on_data(received)
        return "250 2.0.0 OK queued upstream"
