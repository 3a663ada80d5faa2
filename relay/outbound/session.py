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

Which reply lets a transaction go on after each command is written once, in
``EXPECTED`` (MAIL 250; RCPT 250 or 251; DATA 354; the end of data 2xx;
RSET 250), and both paths check every reply with ``expect``: a refusal
raises aiosmtplib's exception for that command, and a success code where
another was due (a 250 to DATA) is a protocol error, never a delivery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType

from aiosmtplib import (
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
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
    "EXPECTED",
    "Expected",
    "ProviderError",
    "Session",
    "StaleSession",
    "Step",
    "Upstream",
    "classify",
    "expect",
    "insecure_auth",
    "retry_hint",
    "smtp_client",
]

log = logging.getLogger("sluice.delivery")

#: a body up to this size is written together with its end line (one copy)
_JOIN_BELOW = 256 * 1024


class Step(StrEnum):
    """A command of one mail transaction whose reply ``send`` waits for (RFC 5321 § 3.3)."""

    MAIL = "MAIL"
    RCPT = "RCPT"
    #: the DATA command itself, answered before any body is sent
    DATA = "DATA"
    #: the body's final "." line
    END = "end of data"
    RSET = "RSET"


@dataclass(frozen=True, slots=True)
class Expected:
    """The replies after which a transaction goes on past one ``Step``."""

    codes: frozenset[int]
    #: the codes as a person reads them ("250 or 251", "2xx")
    shown: str
    #: why, with the RFC it rests on
    why: str


#: The one table of expected reply codes: the sequential path (one command,
#: one reply) and the pipelined path (RFC 2920: MAIL, RCPT..., DATA in one
#: write) both check every reply against it with ``expect``.
EXPECTED: Mapping[Step, Expected] = MappingProxyType(
    {
        Step.MAIL: Expected(
            frozenset({SMTPStatus.completed}), "250", "RFC 5321 § 4.3.2: MAIL S: 250"
        ),
        Step.RCPT: Expected(
            frozenset({SMTPStatus.completed, SMTPStatus.will_forward}),
            "250 or 251",
            "RFC 5321 § 4.3.2: RCPT S: 250, 251 (§ 3.4: 251 'user not local; will "
            "forward' accepts the recipient)",
        ),
        Step.DATA: Expected(
            frozenset({SMTPStatus.start_input}),
            "354",
            "RFC 5321 § 4.3.2: DATA I: 354, and only then the body; a 2xx there means "
            "the server is not reading a body, so we are out of step with it",
        ),
        Step.END: Expected(
            frozenset(range(200, 300)),
            "2xx",
            "RFC 5321 § 4.1.1.4: 250 after the final dot takes responsibility for the "
            "message; any 2xx is a positive completion (§ 4.2.1), and reading another "
            "2xx as a failure would send the message twice",
        ),
        Step.RSET: Expected(
            frozenset({SMTPStatus.completed}), "250", "RFC 5321 § 4.3.2: RSET S: 250"
        ),
    }
)


def expect(step: Step, reply: SMTPResponse, address: str = "") -> SMTPResponse:
    """``reply`` if ``EXPECTED[step]`` allows it; else raise what aiosmtplib would.

    A refusal (4xx, 5xx, or aiosmtplib's -1 for a reply it could not read)
    raises aiosmtplib's exception for that command, with the reply's code:
    ``SMTPSenderRefused`` for MAIL, ``SMTPRecipientRefused`` for RCPT,
    ``SMTPDataError`` for DATA and the end of data, ``SMTPResponseException``
    for RSET. A 2xx or 3xx outside the table (a 250 to DATA, a 252 to RCPT)
    is no refusal but a protocol error: it raises with code -1, which
    ``relay.outbound.replies`` reads as a reply that makes no sense there
    (deferred, never delivered); after DATA the session is then closed.

    Args:
        step: the command the reply answers.
        reply: the server's reply.
        address: the sender (MAIL) or recipient (RCPT) it concerns.

    Raises:
        SMTPResponseException: the reply is not one ``step`` expects.
    """
    expected = EXPECTED[step]
    code = reply.code
    if code in expected.codes:
        return reply
    text = reply.message
    if 200 <= code < 400:
        text = f"protocol error: {code} {text} in reply to {step} (expected {expected.shown})"
        code = -1
    if step is Step.MAIL:
        raise SMTPSenderRefused(code, text, address)
    if step is Step.RCPT:
        raise SMTPRecipientRefused(code, text, address)
    if step is Step.DATA or step is Step.END:
        raise SMTPDataError(code, text)
    raise SMTPResponseException(code, text)


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


async def _reencoded(
    data: bytes, *, eight_bit: bool, provider: str, queue_id: str
) -> bytes | PermFailure:
    """``data``, which does not fit this server as stored, re-encoded so that it does; or why not.

    A re-encoding is logged in one line; it is seldom needed, and takes up to
    0.6 s for 16 MB, so it runs in a thread rather than on the event loop.
    """
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


@dataclass(slots=True)
class _Transaction:
    """One message on its way through ``Session.send``, and the outcomes decided so far."""

    sender: str
    #: the recipients as given (A-labels without SMTPUTF8); outcomes come in this order
    recipients: Sequence[str]
    data: bytes
    crlf_only: bool
    decided: dict[str, Outcome] = field(default_factory=dict)
    #: the recipients this server can carry (the others are decided)
    carried: list[str] = field(default_factory=list)
    #: MAIL parameters (SIZE, SMTPUTF8, BODY)
    options: list[str] = field(default_factory=list)
    #: how the paths are encoded on the command line
    enc: str = "ascii"
    #: the recipients whose RCPT was accepted
    accepted: list[str] = field(default_factory=list)
    #: where the transaction is, for an error that ends it
    phase: Phase = Phase.MAIL
    #: MAIL was accepted and no DATA ended the transaction (RSET is due without a message)
    open: bool = False


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

        ``_prepare`` fits the envelope and body to this server; the envelope
        goes one command at a time (``_envelope_sequential``) or, with
        PIPELINING, in one write (``_envelope_pipelined``); then ``_data``
        sends the body. Every reply is checked against ``EXPECTED``, so both
        paths read the codes alike.

        Never raises for SMTP-level trouble: a broken connection becomes a
        temporary failure of every recipient not yet decided. The one
        exception is ``StaleSession``: a reused connection was found dead at
        MAIL (pipelined: at the group's first reply), before any body was
        sent, so the caller may simply open another.
        """
        smtp = self._smtp
        # No RSET before a reused transaction: a completed (or refused) one
        # leaves the session ready for MAIL (RFC 5321 § 4.1.1.5 is needed only
        # after an aborted one, and those close the connection here). A dead
        # reused connection shows up at MAIL instead, before anything was sent.
        reused = self.transactions > 0
        self.transactions += 1
        tx = _Transaction(sender, recipients, data, crlf_only)
        try:
            if await self._prepare(tx, queue_id):
                start: SMTPResponse | None = None
                if self.upstream.pipelining and smtp.supports_extension("pipelining"):
                    start = await self._envelope_pipelined(tx, reused)
                else:
                    await self._envelope_sequential(tx, reused)
                if tx.accepted:
                    tx.phase = Phase.DATA
                    if start is None:
                        start = await smtp.execute_command(
                            b"DATA", timeout=self.upstream.data_timeout
                        )
                    await self._data(tx, start)
                elif tx.open and smtp.is_connected:
                    await self._rset()  # MAIL's transaction is still open
        except (SMTPException, OSError, TimeoutError) as exc:
            self.close()
            for r in tx.recipients:
                tx.decided.setdefault(r, classify(r, exc, phase=tx.phase))
        return [tx.decided[r] for r in tx.recipients]

    async def _prepare(self, tx: _Transaction, queue_id: str) -> bool:
        """Fit ``tx`` to this server: addresses, body encoding, MAIL parameters.

        Returns False when every recipient is decided already (none can be
        carried by this server), True when ``tx.carried`` go on to MAIL.
        """
        smtp, up = self._smtp, self.upstream
        if not smtp.supports_extension("smtputf8"):
            # An IDN domain is sent as its A-label; a non-ASCII local part stays.
            tx.sender, tx.recipients = ascii_envelope(tx.sender, tx.recipients)
        utf8 = not all(a.isascii() for a in (tx.sender, *tx.recipients))
        tx.carried = list(tx.recipients)
        if utf8 and not smtp.supports_extension("smtputf8"):
            tx.carried, cannot = _without_smtputf8(tx.sender, tx.recipients)
            tx.decided.update((r, no_smtputf8(r)) for r in cannot)
            if not tx.carried:
                return False
            utf8 = False
        eight_bit = smtp.supports_extension("8bitmime")
        if not fits(tx.data, eight_bit=eight_bit):
            wire = await _reencoded(tx.data, eight_bit=eight_bit, provider=up.id, queue_id=queue_id)
            if isinstance(wire, PermFailure):
                tx.decided.update((r, replace(wire, recipient=r)) for r in tx.carried)
                return False
            tx.data, tx.crlf_only = wire, True
        if smtp.supports_extension("size"):
            tx.options.append(f"SIZE={len(tx.data)}")
        if utf8:
            tx.options.append("SMTPUTF8")
        if eight_bit and not tx.data.isascii():
            tx.options.append("BODY=8BITMIME")
        tx.enc = "utf-8" if utf8 else "ascii"
        return True

    async def _envelope_sequential(self, tx: _Transaction, reused: bool) -> None:
        """MAIL, then each RCPT, one command and one reply at a time; fills ``tx.accepted``.

        DATA is not sent here: ``send`` sends it if a recipient was accepted.
        """
        smtp = self._smtp
        try:
            reply = await smtp.execute_command(
                b"MAIL",
                b"FROM:" + _path(tx.sender, tx.enc),
                *(o.encode("ascii") for o in tx.options),
            )
            expect(Step.MAIL, reply, tx.sender)
        except (SMTPServerDisconnected, OSError, TimeoutError) as exc:
            if not reused:
                raise
            self.close()
            raise StaleSession(str(exc)) from exc
        except SMTPResponseException as exc:
            tx.decided.update((r, classify(r, exc, phase=Phase.MAIL)) for r in tx.carried)
            return
        except ValueError as exc:  # not a mailbox, or not encodable: never on the wire
            tx.decided.update((r, _unsendable(r, "sender", exc)) for r in tx.carried)
            return
        tx.open = True
        tx.phase = Phase.RCPT
        refused: dict[str, SMTPResponseException] = {}
        for rcpt in tx.carried:
            try:
                reply = await smtp.execute_command(b"RCPT", b"TO:" + _path(rcpt, tx.enc))
                expect(Step.RCPT, reply, rcpt)
            except ValueError as exc:
                tx.decided[rcpt] = _unsendable(rcpt, "recipient", exc)
                continue
            except SMTPResponseException as exc:
                refused[rcpt] = exc
                tx.decided[rcpt] = classify(rcpt, exc, phase=Phase.RCPT)
                if closes_channel(exc.code):
                    raise  # nothing more can be sent on this connection
                continue
            tx.accepted.append(rcpt)
        _shared_refusal(refused, tx.carried, tx.decided)

    async def _envelope_pipelined(self, tx: _Transaction, reused: bool) -> SMTPResponse | None:
        """MAIL, every RCPT and DATA in one write (RFC 2920), then their replies in order.

        Each reply is checked against ``EXPECTED`` and classified as
        ``_envelope_sequential`` would classify it: the same exceptions, with
        the same ``Phase``. Fills ``tx.accepted``; returns the reply to DATA
        (``None`` when no group could be written).
        """
        smtp, up = self._smtp, self.upstream
        try:
            lines = [
                command(
                    b"MAIL",
                    b"FROM:" + _path(tx.sender, tx.enc),
                    *(o.encode("ascii") for o in tx.options),
                )
            ]
        except ValueError as exc:
            tx.decided.update((r, _unsendable(r, "sender", exc)) for r in tx.carried)
            return None
        named: list[str] = []  # the recipients whose RCPT is in the group
        for rcpt in tx.carried:
            try:
                lines.append(command(b"RCPT", b"TO:" + _path(rcpt, tx.enc)))
                named.append(rcpt)
            except ValueError as exc:
                tx.decided[rcpt] = _unsendable(rcpt, "recipient", exc)
        if not named:
            return None  # no RCPT can be written: no transaction to open
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
            try:
                expect(Step.MAIL, mail, tx.sender)
            except SMTPResponseException as refused_by:
                # RFC 2920 § 3.1: the RCPT and DATA replies that follow
                # (503 "need MAIL") only echo this refusal; they are read
                # to keep the session in step, never used as the reason.
                tx.decided.update(
                    (r, classify(r, refused_by, phase=Phase.MAIL)) for r in tx.carried
                )
                if not closes_channel(mail.code):
                    await self._discard(replies, protocol, len(named), up.data_timeout)
                return None
            tx.phase = Phase.RCPT
            refused: dict[str, SMTPResponseException] = {}
            for rcpt in named:
                reply = await self._reply(replies, timeout)
                try:
                    expect(Step.RCPT, reply, rcpt)
                except SMTPResponseException as exc:
                    refused[rcpt] = exc
                    tx.decided[rcpt] = classify(rcpt, exc, phase=Phase.RCPT)
                    if closes_channel(reply.code):
                        raise  # nothing more can be read or sent
                    continue
                tx.accepted.append(rcpt)
            _shared_refusal(refused, tx.carried, tx.decided)
            if tx.accepted:
                tx.phase = Phase.DATA
            start = await self._reply(replies, up.data_timeout)
            started = start.code in EXPECTED[Step.DATA].codes
            if not tx.accepted and started:
                # RFC 2920 § 3.1: DATA accepted although every RCPT was
                # refused: end the (empty) message to stay in step; the
                # server must send it nowhere (§ 3.2, rule 4).
                await self._lone_dot(replies, protocol, up.data_timeout)
            if replies.pending:
                # More replies than commands: the session is out of step.
                raise SMTPResponseException(-1, "unexpected reply to a pipelined group")
        # MAIL's transaction is still open unless DATA started (and the dot ended it).
        tx.open = not started
        return start

    async def _data(self, tx: _Transaction, start: SMTPResponse) -> None:
        """After DATA's reply ``start``: the body, and the end-of-data reply for ``tx.accepted``.

        The same for both paths: a reply to DATA or to the final dot that
        ``EXPECTED`` does not allow is classified under ``Phase.DATA`` for
        every accepted recipient (``shared`` when there are several), and
        one that could not be read, or made no sense there, closes the
        session (it is out of step with the server).
        """
        smtp, timeout = self._smtp, self.upstream.data_timeout
        shared = len(tx.accepted) > 1
        try:
            expect(Step.DATA, start)
            # What ``SMTP.data`` does after its 354, with the body from
            # ``wire_data`` instead of its regexes, and only public protocol
            # calls: ``read_response`` marks a reply as expected before it
            # first awaits, so nothing sent after the body can be missed.
            body, end = wire_data(tx.data, crlf_only=tx.crlf_only)
            protocol = smtp.protocol
            if protocol is None:
                raise SMTPServerDisconnected("Connection lost")
            try:
                if len(body) <= _JOIN_BELOW:
                    protocol.write(body + end)  # one segment, one wake-up of the server
                else:
                    protocol.write(body)  # not copied just to add five bytes
                    protocol.write(end)
                final = expect(Step.END, await protocol.read_response(timeout=timeout))
            except (SMTPServerDisconnected, SMTPTimeoutError):
                smtp.close()
                raise
            for r in tx.accepted:
                tx.decided[r] = classify(r, code=final.code, text=final.message, phase=Phase.DATA)
        except SMTPResponseException as exc:
            for r in tx.accepted:
                tx.decided[r] = classify(r, exc, phase=Phase.DATA, shared=shared)
            if unreadable(exc.code, exc.message):
                self.close()  # a reply we could not read: the session is desynced

    async def _rset(self) -> None:
        """RSET (RFC 5321 § 4.1.1.5): end a transaction that carried no message."""
        expect(Step.RSET, await self._smtp.execute_command(b"RSET"))

    async def _reply(self, replies: Replies, read_timeout: float | None) -> SMTPResponse:
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
        if start.code in EXPECTED[Step.DATA].codes:  # it ignored the refusals: stay in step
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
