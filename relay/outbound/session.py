"""Outbound SMTP: one transaction to one upstream, and what it meant per recipient.

``Session`` wraps one aiosmtplib connection (connect, STARTTLS, AUTH, then any
number of transactions) and reports, per recipient, the reply it got and to
which command (``Phase``). What a reply *means* (delivered, this recipient
waits, the provider failed or asked to back off, this provider cannot carry
it, a permanent failure) is decided in ``relay.outbound.replies`` alone;
``classify`` only hands it the reply or the exception.

The body after DATA is prepared by ``message.wire_data``: every line ending
written as CRLF and dot-stuffed (RFC 5321 § 4.5.2), as aiosmtplib would, but
in C-level passes rather than its regexes. A message whose lines all end in
CRLF leaves byte for byte as it was stored; the SMTP listener rejects bare
line endings by default for that reason. Before that, ``transfer.convert``
re-encodes the parts of a message that this server could not take as stored
(lines over 998 octets; 8-bit data without 8BITMIME), and without SMTPUTF8
an IDN domain is sent as its A-label (``transfer.ascii_envelope``).

When the server offers PIPELINING (RFC 2920) and the provider allows it,
MAIL, every RCPT and DATA go in one write and the replies are read in order
(``relay.outbound.pipeline``), two round trips fewer per message; each reply
is classified as the one-command-at-a-time path would classify it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.protocol import SMTPProtocol

from relay.errors import SluiceError
from relay.message import wire_data
from relay.model import Outcome, PermFailure, valid_address
from relay.outbound.handshake import (
    HandshakeError,
    Upstream,
    handshake,
    insecure_auth,
    smtp_client,
)
from relay.outbound.pipeline import Replies, command
from relay.outbound.replies import (
    Phase,
    closes_channel,
    error_outcome,
    no_smtputf8,
    reply_outcome,
    retry_hint,
    shared_refusal,
    unreadable,
)
from relay.outbound.transfer import Unconvertible, ascii_envelope, convert, fits

__all__ = [
    "ProviderError",
    "Session",
    "StaleSession",
    "Upstream",
    "classify",
    "insecure_auth",
    "retry_hint",
    "smtp_client",
]

log = logging.getLogger("sluice.delivery")

#: a body up to this size is written together with its end line (one copy)
_JOIN_BELOW = 256 * 1024


class StaleSession(SluiceError):
    """A reused connection turned out to be dead before the transaction began."""


class ProviderError(SluiceError):
    """The provider could not take any mail (connect, TLS, EHLO, AUTH)."""

    def __init__(self, text: str, code: int | None = None, *, retry_after: float | None = None):
        super().__init__(text)
        self.text = text
        self.code = code
        self.retry_after = retry_after


def classify(
    recipient: str,
    exc: BaseException | None = None,
    *,
    code: int | None = None,
    text: str = "",
    phase: Phase = Phase.DATA,
    shared: bool = False,
) -> Outcome:
    """One recipient's outcome from a reply to ``phase``, or from an exception.

    The meaning is ``relay.outbound.replies``'s; this only knows ``ProviderError``
    (the provider could take no mail at all: connect, TLS, EHLO, AUTH).
    """
    if isinstance(exc, ProviderError):
        return reply_outcome(
            recipient,
            Phase.CONNECT,
            exc.code,
            exc.text.removeprefix(f"{exc.code} ") if exc.code is not None else exc.text,
            reply=exc.text,
            retry_after=exc.retry_after,
        )
    if exc is not None:
        return error_outcome(recipient, exc, phase, shared=shared)
    return reply_outcome(recipient, phase, code, text, shared=shared)


def _without_smtputf8(sender: str, recipients: Sequence[str]) -> tuple[list[str], list[str]]:
    """(recipients this provider can carry without SMTPUTF8, those it cannot).

    RFC 6531 § 3.4: a non-ASCII address may only be sent with SMTPUTF8. A
    non-ASCII sender takes every recipient with it; otherwise only the
    non-ASCII recipients are left for a provider that offers SMTPUTF8.
    """
    if not sender.isascii():
        return [], list(recipients)
    return [r for r in recipients if r.isascii()], [r for r in recipients if not r.isascii()]


def _path(address: str, encoding: str) -> bytes:
    """``<address>`` for MAIL FROM or RCPT TO.

    What ``SMTP.mail``/``rcpt`` would send, without their ``email.utils``
    parsing per command (a seventh of the delivery CPU on small messages):
    the address was checked when it was accepted, and is checked again here
    so that nothing but a mailbox ever reaches the command line.

    Raises:
        ValueError: not a mailbox, or not encodable (non-ASCII without SMTPUTF8).
    """
    if address and not valid_address(address):
        raise ValueError(f"{address!r} is not a mailbox")
    return f"<{address}>".encode(encoding)


def _unsendable(recipient: str, which: str, exc: ValueError) -> PermFailure:
    """A sender or recipient address aiosmtplib (or ``pipeline.command``) will not write."""
    code = "5.1.7" if which == "sender" else "5.1.3"
    return PermFailure(recipient, 553, f"553 {code} {which} address cannot be sent: {exc}")


def _shared_refusal(
    refused: dict[str, SMTPResponseException], carried: list[str], decided: dict[str, Outcome]
) -> None:
    """The same 4xx to every recipient speaks for the provider: reclassify them so."""
    if len(refused) == len(carried) and shared_refusal(
        [(e.code, e.message) for e in refused.values()]
    ):
        for r, refusal in refused.items():
            decided[r] = classify(r, refusal, phase=Phase.RCPT, shared=True)


async def _mail(smtp: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str) -> None:
    args = [b"FROM:" + _path(sender, encoding), *(o.encode("ascii") for o in options)]
    reply = await smtp.execute_command(b"MAIL", *args)
    if reply.code != 250:
        raise SMTPSenderRefused(reply.code, reply.message, sender)


async def _rcpt(smtp: aiosmtplib.SMTP, recipient: str, encoding: str) -> None:
    reply = await smtp.execute_command(b"RCPT", b"TO:" + _path(recipient, encoding))
    if reply.code not in (250, 251):
        raise SMTPRecipientRefused(reply.code, reply.message, recipient)


async def _data(
    smtp: aiosmtplib.SMTP, data: bytes, *, read_timeout: float, crlf_only: bool
) -> aiosmtplib.SMTPResponse:
    """DATA, then the body from ``wire_data``; what ``SMTP.data`` does, without its regexes.

    Only public protocol calls: ``read_response`` marks a reply as expected
    before it first awaits, so nothing the server sends after the body can be
    missed. Raises ``SMTPDataError`` for a reply other than 354 / 250.
    """
    start = await smtp.execute_command(b"DATA", timeout=read_timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    return await _body(smtp, data, read_timeout=read_timeout, crlf_only=crlf_only)


async def _body(
    smtp: aiosmtplib.SMTP, data: bytes, *, read_timeout: float, crlf_only: bool
) -> aiosmtplib.SMTPResponse:
    """The body after a 354, and the final reply; ``SMTPDataError`` for one other than 250."""
    body, end = wire_data(data, crlf_only=crlf_only)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    try:
        if len(body) <= _JOIN_BELOW:
            protocol.write(body + end)  # one segment, one wake-up of the server
        else:
            protocol.write(body)  # not copied just to add five bytes
            protocol.write(end)
        reply = await protocol.read_response(timeout=read_timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()
        raise
    if reply.code != 250:
        raise SMTPDataError(reply.code, reply.message)
    return reply


async def _for_server(
    data: bytes, *, eight_bit: bool, provider: str, queue_id: str
) -> bytes | PermFailure:
    """``data`` as this server can take it (``data`` itself when it fits), or why not.

    A re-encoding is logged in one line; it is seldom needed, and takes up to
    0.6 s for 16 MB, so it runs in a thread rather than on the event loop.
    """
    if fits(data, eight_bit=eight_bit):
        return data
    try:
        wire = await asyncio.to_thread(convert, data, eight_bit=eight_bit)
    except Unconvertible as exc:
        text = f"554 5.6.3 the message cannot be made to fit this provider: {exc.reason}"
        log.warning("%s%s", _qid(queue_id), text, extra={"event": "transfer"})
        return PermFailure("", 554, text)
    log.info(
        "%sre-encoded for provider %s (%s): %s",
        _qid(queue_id),
        provider,
        "8BITMIME" if eight_bit else "7-bit",
        "; ".join(wire.changes),
        extra={"event": "transfer"},
    )
    return wire.data


def _qid(queue_id: str) -> str:
    """The ``"QUEUEID: "`` prefix of a log line (logsetup reads the queue id from it)."""
    return f"{queue_id}: " if queue_id else ""


class Session:
    """One open connection to an upstream, reusable for several transactions."""

    def __init__(self, upstream: Upstream, *, local_hostname: str) -> None:
        self.upstream = upstream
        self._smtp = smtp_client(upstream, local_hostname=local_hostname)
        self.transactions = 0

    @property
    def usable(self) -> bool:
        return self._smtp.is_connected

    async def open(self) -> None:
        """Connect, secure and authenticate (``handshake``). Raises ``ProviderError``."""
        try:
            await handshake(self._smtp, self.upstream)
        except HandshakeError as exc:
            self.close()
            hint = retry_hint(exc.text) if exc.code is not None else None
            raise ProviderError(exc.text, exc.code, retry_after=hint) from exc
        except BaseException:
            self.close()
            raise

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        crlf_only: bool = False,
        queue_id: str = "",
    ) -> list[Outcome]:
        """One mail transaction; returns an outcome for every recipient, in order.

        Never raises for SMTP-level trouble: a broken connection becomes a
        temporary failure of every recipient not yet decided. The one
        exception is ``StaleSession``: a reused connection was found dead at
        MAIL (pipelined: at the group's first reply), before any body was
        sent, so the caller may simply open another.
        """
        smtp, up = self._smtp, self.upstream
        decided: dict[str, Outcome] = {}
        # No RSET before a reused transaction: a completed (or refused) one
        # leaves the session ready for MAIL (RFC 5321 § 4.1.1.5 is needed only
        # after an aborted one, and those close the connection here). A dead
        # reused connection shows up at MAIL instead, before anything was sent.
        reused = self.transactions > 0
        phase = Phase.MAIL
        try:
            self.transactions += 1
            if not smtp.supports_extension("smtputf8"):
                # An IDN domain is sent as its A-label; a non-ASCII local part stays.
                sender, recipients = ascii_envelope(sender, recipients)
            utf8 = not all(a.isascii() for a in (sender, *recipients))
            carried = list(recipients)
            if utf8 and not smtp.supports_extension("smtputf8"):
                carried, cannot = _without_smtputf8(sender, recipients)
                decided.update((r, no_smtputf8(r)) for r in cannot)
                if not carried:
                    return [decided[r] for r in recipients]
                utf8 = False
            eight_bit = smtp.supports_extension("8bitmime")
            wire = await _for_server(data, eight_bit=eight_bit, provider=up.id, queue_id=queue_id)
            if isinstance(wire, PermFailure):
                decided.update((r, replace(wire, recipient=r)) for r in carried)
                return [decided[r] for r in recipients]
            if wire is not data:
                data, crlf_only = wire, True
            options = []
            if smtp.supports_extension("size"):
                options.append(f"SIZE={len(data)}")
            if utf8:
                options.append("SMTPUTF8")
            if eight_bit and not data.isascii():
                options.append("BODY=8BITMIME")
            enc = "utf-8" if utf8 else "ascii"
            if up.pipelining and smtp.supports_extension("pipelining"):
                await self._pipelined(
                    sender,
                    carried,
                    data,
                    decided,
                    options=options,
                    enc=enc,
                    crlf_only=crlf_only,
                    reused=reused,
                )
                return [decided[r] for r in recipients]
            try:
                await _mail(smtp, sender, options, enc)
            except (SMTPServerDisconnected, OSError, TimeoutError) as exc:
                if not reused:
                    raise
                self.close()
                raise StaleSession(str(exc)) from exc
            except SMTPResponseException as exc:
                decided.update((r, classify(r, exc, phase=Phase.MAIL)) for r in carried)
                return [decided[r] for r in recipients]
            except ValueError as exc:  # aiosmtplib refuses to put it on the wire
                decided.update((r, _unsendable(r, "sender", exc)) for r in carried)
                return [decided[r] for r in recipients]
            phase = Phase.RCPT
            accepted = []
            refused: dict[str, SMTPResponseException] = {}
            for rcpt in carried:
                try:
                    await _rcpt(smtp, rcpt, enc)
                    accepted.append(rcpt)
                except SMTPResponseException as exc:
                    refused[rcpt] = exc
                    decided[rcpt] = classify(rcpt, exc, phase=Phase.RCPT)
                    if closes_channel(exc.code):
                        raise  # nothing more can be sent on this connection
                except ValueError as exc:
                    decided[rcpt] = _unsendable(rcpt, "recipient", exc)
            _shared_refusal(refused, carried, decided)
            if accepted:
                phase = Phase.DATA
                shared = len(accepted) > 1
                try:
                    reply = await _data(
                        smtp, data, read_timeout=up.data_timeout, crlf_only=crlf_only
                    )
                    for r in accepted:
                        decided[r] = classify(
                            r, code=reply.code, text=reply.message, phase=Phase.DATA
                        )
                except SMTPResponseException as exc:
                    for r in accepted:
                        decided[r] = classify(r, exc, phase=Phase.DATA, shared=shared)
                    if unreadable(exc.code, exc.message):
                        self.close()  # a reply we could not read: the session is desynced
            else:
                await smtp.rset()
        except (SMTPException, OSError, TimeoutError) as exc:
            self.close()
            for r in recipients:
                decided.setdefault(r, classify(r, exc, phase=phase))
        return [decided[r] for r in recipients]

    async def _pipelined(
        self,
        sender: str,
        carried: list[str],
        data: bytes,
        decided: dict[str, Outcome],
        *,
        options: list[str],
        enc: str,
        crlf_only: bool,
        reused: bool,
    ) -> None:
        """``send``'s transaction with PIPELINING (RFC 2920): one write, then the replies.

        MAIL, every RCPT and DATA go out in one write; their replies are read
        in order and mean what they mean to ``send``'s one-command-at-a-time
        path: the same exceptions, classified with the same ``Phase``. Only
        then, if DATA got 354 and a recipient was accepted, comes the body.
        Fills ``decided`` for every recipient of ``carried``.
        """
        smtp, up = self._smtp, self.upstream
        phase = Phase.MAIL
        try:
            try:
                lines = [
                    command(
                        b"MAIL",
                        b"FROM:" + _path(sender, enc),
                        *(o.encode("ascii") for o in options),
                    )
                ]
            except ValueError as exc:
                decided.update((r, _unsendable(r, "sender", exc)) for r in carried)
                return
            named: list[str] = []  # the recipients whose RCPT is in the group
            for rcpt in carried:
                try:
                    lines.append(command(b"RCPT", b"TO:" + _path(rcpt, enc)))
                    named.append(rcpt)
                except ValueError as exc:
                    decided[rcpt] = _unsendable(rcpt, "recipient", exc)
            if not named:
                return  # no RCPT can be written: no transaction to open
            lines.append(b"DATA\r\n")
            timeout = smtp.timeout
            with ExitStack() as reading:
                try:
                    protocol = smtp.protocol
                    if protocol is None:
                        raise SMTPServerDisconnected("Server not connected")
                    replies = reading.enter_context(Replies.reading(protocol))
                    protocol.write(b"".join(lines))
                    mail = await self._reply(replies, timeout)
                except (SMTPServerDisconnected, OSError, TimeoutError) as exc:
                    if not reused:
                        raise
                    # Closed while idle: the first reply is the EOF. Nothing
                    # was delivered (no body was sent); the caller reconnects.
                    self.close()
                    raise StaleSession(str(exc)) from exc
                if mail.code != 250:
                    # RFC 2920 § 3.1: the RCPT and DATA replies that follow
                    # (503 "need MAIL") only echo this refusal; they are read
                    # to keep the session in step, never used as the reason.
                    refused_by = SMTPSenderRefused(mail.code, mail.message, sender)
                    decided.update((r, classify(r, refused_by, phase=Phase.MAIL)) for r in carried)
                    if not closes_channel(mail.code):
                        await self._discard(replies, protocol, len(named), up.data_timeout)
                    return
                phase = Phase.RCPT
                accepted: list[str] = []
                refused: dict[str, SMTPResponseException] = {}
                for rcpt in named:
                    reply = await self._reply(replies, timeout)
                    if reply.code in (250, 251):
                        accepted.append(rcpt)
                        continue
                    refused[rcpt] = SMTPRecipientRefused(reply.code, reply.message, rcpt)
                    decided[rcpt] = classify(rcpt, refused[rcpt], phase=Phase.RCPT)
                    if closes_channel(reply.code):
                        raise refused[rcpt]  # nothing more can be read or sent
                _shared_refusal(refused, carried, decided)
                if accepted:
                    phase = Phase.DATA
                start = await self._reply(replies, up.data_timeout)
                if not accepted and start.code == 354:
                    # RFC 2920 § 3.1: DATA accepted although every RCPT was
                    # refused: end the (empty) message to stay in step; the
                    # server must send it nowhere (§ 3.2, rule 4).
                    await self._lone_dot(replies, protocol, up.data_timeout)
                if replies.pending:
                    # More replies than commands: the session is out of step.
                    raise SMTPResponseException(-1, "unexpected reply to a pipelined group")
            if not accepted:
                if start.code != 354 and smtp.is_connected:
                    await smtp.rset()  # MAIL's transaction is still open
                return
            shared = len(accepted) > 1
            try:
                if start.code != 354:
                    raise SMTPDataError(start.code, start.message)
                final = await _body(smtp, data, read_timeout=up.data_timeout, crlf_only=crlf_only)
                for r in accepted:
                    decided[r] = classify(r, code=final.code, text=final.message, phase=Phase.DATA)
            except SMTPResponseException as exc:
                for r in accepted:
                    decided[r] = classify(r, exc, phase=Phase.DATA, shared=shared)
                if unreadable(exc.code, exc.message):
                    self.close()  # a reply we could not read: the session is desynced
        except (SMTPException, OSError, TimeoutError) as exc:
            self.close()
            for r in carried:
                decided.setdefault(r, classify(r, exc, phase=phase))

    async def _reply(self, replies: Replies, read_timeout: float | None) -> aiosmtplib.SMTPResponse:
        """The next reply of the group; the session closes on 421, as aiosmtplib's does."""
        reply = await replies.next(read_timeout)
        if closes_channel(reply.code):
            self.close()
        return reply

    async def _discard(
        self, replies: Replies, protocol: SMTPProtocol, rcpts: int, data_timeout: float
    ) -> None:
        """Read (and drop) the RCPT and DATA replies of a group whose MAIL was refused."""
        for _ in range(rcpts):
            if closes_channel((await self._reply(replies, self._smtp.timeout)).code):
                return
        start = await self._reply(replies, data_timeout)
        if start.code == 354:  # a server that ignored the refusals: stay in step
            await self._lone_dot(replies, protocol, data_timeout)

    async def _lone_dot(
        self, replies: Replies, protocol: SMTPProtocol, read_timeout: float
    ) -> None:
        """End a message that must not be sent: no body, the final dot alone (reply dropped)."""
        protocol.write(b".\r\n")
        await self._reply(replies, read_timeout)

    async def quit(self) -> None:
        if self._smtp.is_connected:
            try:
                await self._smtp.quit(timeout=5)
            except (SMTPException, OSError, TimeoutError):
                self.close()

    def close(self) -> None:
        self._smtp.close()
