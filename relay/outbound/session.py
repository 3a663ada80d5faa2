"""Outbound SMTP: one transaction to one upstream, and what it meant per recipient.

``Session`` wraps one aiosmtplib connection (connect, STARTTLS, AUTH, then any
number of transactions); ``classify`` is the single place where an exception
or a reply becomes an ``Outcome``. The rule (stamina's: never retry blindly):

* 2xx after DATA: delivered;
* 5xx to MAIL, RCPT or DATA: a permanent failure of that recipient;
* 4xx: temporary; 421, a ``4.7.x`` throttle, a "try again in N minutes" hint
  and every connection, TLS, timeout or AUTH problem are also the *provider's*
  fault, so another provider may take the mail at once;
* anything unexpected: temporary, and logged loudly as a bug.

The body after DATA is prepared by ``message.wire_data``: every line ending
written as CRLF and dot-stuffed (RFC 5321 § 4.5.2), as aiosmtplib would, but
in C-level passes rather than its regexes. A message whose lines all end in
CRLF leaves byte for byte as it was stored; the SMTP listener rejects bare
line endings by default for that reason.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from relay.message import wire_data
from relay.model import Delivered, Outcome, PermFailure, TempFailure, valid_address
from relay.outbound.handshake import (
    HandshakeError,
    Upstream,
    handshake,
    insecure_auth,
    smtp_client,
)

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


class StaleSession(Exception):
    """A reused connection turned out to be dead before the transaction began."""


class ProviderError(Exception):
    """The provider could not take any mail (connect, TLS, EHLO, AUTH)."""

    def __init__(self, text: str, code: int | None = None, *, retry_after: float | None = None):
        super().__init__(text)
        self.text = text
        self.code = code
        self.retry_after = retry_after


_HINT = re.compile(
    r"(?:try\s+(?:again\s+)?(?:later\s+)?in|retry\s+in|after)\s+(\d+)\s*"
    r"(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)\b",
    re.IGNORECASE,
)


def retry_hint(text: str) -> float | None:
    """Seconds a provider asked us to wait ("try again in 5 minutes"), if any."""
    match = _HINT.search(text)
    if not match:
        return None
    n, unit = int(match.group(1)), match.group(2).lower()
    return float(n * (3600 if unit.startswith("h") else 60 if unit.startswith("m") else 1))


_THROTTLE = re.compile(r"^\s*4\.7\.\d{1,3}\b")


def _is_throttle(text: str) -> bool:
    """A ``4.7.x`` enhanced status (RFC 3463: security or policy), e.g. a rate limit."""
    return _THROTTLE.match(text) is not None


def _reply(code: int | None, message: str) -> str:
    text = " ".join(message.split())
    return f"{code} {text}" if code is not None and code > 0 else text


def classify(
    recipient: str, exc: BaseException | None = None, *, code: int | None = None, text: str = ""
) -> Outcome:
    """Turn a reply code, or an exception, into one recipient's outcome."""
    if exc is not None:
        if isinstance(exc, SMTPResponseException):
            code, text = exc.code, exc.message
            if isinstance(exc, SMTPAuthenticationError):
                return TempFailure(
                    recipient,
                    code,
                    f"authentication failed: {_reply(code, text)}",
                    provider_fault=True,
                )
        elif isinstance(exc, ProviderError):
            return TempFailure(
                recipient, exc.code, exc.text, retry_after=exc.retry_after, provider_fault=True
            )
        elif isinstance(exc, SMTPTimeoutError | TimeoutError):
            return TempFailure(
                recipient,
                None,
                f"4.4.1 timeout talking to the provider: {exc}",
                provider_fault=True,
            )
        elif isinstance(exc, ssl.SSLError):
            return TempFailure(recipient, None, f"4.7.5 TLS failure: {exc}", provider_fault=True)
        elif isinstance(exc, SMTPServerDisconnected | ConnectionError | OSError):
            return TempFailure(
                recipient, None, f"4.4.2 connection lost: {exc}", provider_fault=True
            )
        else:
            log.error("unexpected delivery error for %s; deferring", recipient, exc_info=exc)
            return TempFailure(
                recipient, None, f"4.3.0 internal error: {type(exc).__name__}: {exc}"
            )
    reply = _reply(code, text)
    if code is not None and 200 <= code < 300:
        return Delivered(recipient, code, reply)
    # aiosmtplib reports a reply it could not read as 500 "Response too long"
    # or code -1: our side's problem, never the upstream's 5xx.
    local = code == 500 and text.startswith("Response too long")
    if code is not None and 500 <= code < 600 and not local:
        return PermFailure(recipient, code, reply)
    # 4xx, and local protocol errors (code -1, "Response too long")
    hint = retry_hint(text)
    fault = code == 421 or (
        code is not None and 400 <= code < 500 and (hint is not None or _is_throttle(text))
    )
    return TempFailure(recipient, code, reply, retry_after=hint, provider_fault=fault)


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
    body, end = wire_data(data, crlf_only=crlf_only)
    start = await smtp.execute_command(b"DATA", timeout=read_timeout)
    if start.code != 354:
        raise SMTPDataError(start.code, start.message)
    protocol = smtp.protocol
    if protocol is None:
        raise SMTPServerDisconnected("Connection lost")
    try:
        protocol.write(body)
        protocol.write(end)
        reply = await protocol.read_response(timeout=read_timeout)
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()
        raise
    if reply.code != 250:
        raise SMTPDataError(reply.code, reply.message)
    return reply


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
        self, sender: str, recipients: Sequence[str], data: bytes, *, crlf_only: bool = False
    ) -> list[Outcome]:
        """One mail transaction; returns an outcome for every recipient, in order.

        Never raises for SMTP-level trouble: a broken connection becomes a
        temporary failure of every recipient not yet decided. The one
        exception is ``StaleSession``: a reused connection was found dead at
        MAIL, before anything was sent, so the caller may simply open another.
        """
        smtp, up = self._smtp, self.upstream
        decided: dict[str, Outcome] = {}
        # No RSET before a reused transaction: a completed (or refused) one
        # leaves the session ready for MAIL (RFC 5321 § 4.1.1.5 is needed only
        # after an aborted one, and those close the connection here). A dead
        # reused connection shows up at MAIL instead, before anything was sent.
        reused = self.transactions > 0
        try:
            self.transactions += 1
            utf8 = not all(a.isascii() for a in (sender, *recipients))
            if utf8 and not smtp.supports_extension("smtputf8"):
                return [
                    PermFailure(
                        r,
                        553,
                        "553 5.6.7 the provider does not support SMTPUTF8 "
                        "and an address is not ASCII",
                    )
                    for r in recipients
                ]
            options = []
            if smtp.supports_extension("size"):
                options.append(f"SIZE={len(data)}")
            if utf8:
                options.append("SMTPUTF8")
            if not data.isascii() and smtp.supports_extension("8bitmime"):
                options.append("BODY=8BITMIME")
            enc = "utf-8" if utf8 else "ascii"
            try:
                await _mail(smtp, sender, options, enc)
            except (SMTPServerDisconnected, OSError, TimeoutError) as exc:
                if not reused:
                    raise
                self.close()
                raise StaleSession(str(exc)) from exc
            except SMTPResponseException as exc:
                return [classify(r, exc) for r in recipients]
            except ValueError as exc:  # aiosmtplib refuses to put it on the wire
                text = f"553 5.1.7 sender address cannot be sent: {exc}"
                return [PermFailure(r, 553, text) for r in recipients]
            accepted = []
            for rcpt in recipients:
                try:
                    await _rcpt(smtp, rcpt, enc)
                    accepted.append(rcpt)
                except SMTPResponseException as exc:
                    decided[rcpt] = classify(rcpt, exc)
                    if exc.code == 421:
                        raise
                except ValueError as exc:
                    text = f"553 5.1.3 recipient address cannot be sent: {exc}"
                    decided[rcpt] = PermFailure(rcpt, 553, text)
            if accepted:
                try:
                    reply = await _data(
                        smtp, data, read_timeout=up.data_timeout, crlf_only=crlf_only
                    )
                    for r in accepted:
                        decided[r] = classify(r, code=reply.code, text=reply.message)
                except SMTPResponseException as exc:
                    for r in accepted:
                        decided[r] = classify(r, exc)
                    if not 200 <= exc.code < 600 or exc.message.startswith("Response too long"):
                        self.close()  # a reply we could not read: the session is desynced
            else:
                await smtp.rset()
        except (SMTPException, OSError, TimeoutError) as exc:
            self.close()
            for r in recipients:
                decided.setdefault(r, classify(r, exc))
        return [decided[r] for r in recipients]

    async def quit(self) -> None:
        if self._smtp.is_connected:
            try:
                await self._smtp.quit(timeout=5)
            except (SMTPException, OSError, TimeoutError):
                self.close()

    def close(self) -> None:
        self._smtp.close()
