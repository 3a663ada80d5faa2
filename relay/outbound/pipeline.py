"""Reading the replies to pipelined SMTP commands (RFC 2920), in order.

With PIPELINING a client writes ``MAIL``, every ``RCPT`` and ``DATA`` at once
and then reads one reply per command, in the order sent (RFC 2920 § 3.1). A
server SHOULD send the replies to a group as a unit (§ 3.2, rule 2), so several
replies usually arrive in one TCP segment.

aiosmtplib 5.1 reads one reply per command and cannot take that:
``SMTPProtocol.data_received`` parses the first complete reply of a segment
and keeps the rest in its buffer without parsing it (the next
``read_response`` then waits for bytes that never come), and drops whatever
arrives while no ``read_response`` is pending. So while a pipelined group's
replies are due, ``Replies`` takes the connection's reads over through the
transport's public ``set_protocol``, queues every complete reply it parses,
and hands the connection back to aiosmtplib's protocol afterwards. Writes
still go through ``SMTPProtocol.write``; connection loss and flow control are
passed on to it, so aiosmtplib sees the connection as it is.

Replies are parsed as aiosmtplib parses them (RFC 5321 § 4.2: ``CODE-text``
continues a reply, ``CODE text`` ends it; the texts joined by newlines), with
its code -1 for a line that does not start with a code, so that
``relay.outbound.replies`` reads them the same way.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from contextlib import contextmanager

from aiosmtplib import (
    SMTPReadTimeoutError,
    SMTPResponse,
    SMTPResponseException,
    SMTPServerDisconnected,
)
from aiosmtplib.protocol import SMTPProtocol

__all__ = ["Replies", "command"]

#: aiosmtplib's limits: one reply line, and one reply with its continuation lines
#: (RFC 5321 § 4.5.3.1.5 allows 512 octets; these are generous)
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4

#: RFC 5321 § 4.1.1: a command line holds no control characters but its CRLF
#: (aiosmtplib's ``execute_command`` refuses the same, with ValueError)
_CONTROL = frozenset(range(0x20)) | {0x7F}


def command(verb: bytes, *args: bytes) -> bytes:
    """One command line, CRLF included, as ``execute_command`` would write it.

    Raises:
        ValueError: an argument holds a control character (CR, LF, NUL...).
    """
    for arg in args:
        if not _CONTROL.isdisjoint(arg):
            raise ValueError("Command arg contains a prohibited control character")
    return b" ".join((verb, *args)) + b"\r\n"


class Replies(asyncio.Protocol):
    """The connection's reader while the replies to a pipelined group are due.

    Use ``Replies.reading(protocol)``; ``await next(timeout)`` returns the
    replies in the order they came.
    """

    def __init__(self, inner: SMTPProtocol) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._replies: collections.deque[SMTPResponse] = collections.deque()
        #: the connection is lost, or a reply could not be read: every later
        #: ``next`` raises it (the replies after it cannot be paired any more)
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    @contextmanager
    def reading(cls, protocol: SMTPProtocol) -> Iterator[Replies]:
        """Take ``protocol``'s reads over for the block; hand them back after it."""
        transport = protocol.transport
        if transport is None or transport.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        replies = cls(protocol)
        transport.set_protocol(replies)
        try:
            yield replies
        finally:
            if transport.get_protocol() is replies:
                transport.set_protocol(protocol)

    @property
    def pending(self) -> bool:
        """Bytes came that no ``next`` has taken (a reply nobody asked for)."""
        return bool(self._replies or self._buffer)

    async def next(self, read_timeout: float | None) -> SMTPResponse:
        """The next reply; raises as aiosmtplib's ``read_response`` does."""
        try:
            async with asyncio.timeout(read_timeout):
                # Woken by every segment; one may hold part of a reply only.
                while not self._replies and self._error is None:
                    self._waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
        except TimeoutError as exc:
            raise SMTPReadTimeoutError("Timed out waiting for server response") from exc
        if self._replies:
            return self._replies.popleft()
        assert self._error is not None
        raise self._error

    # ------------------------------------------------------- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
            if len(self._buffer) > MAX_REPLY:
                raise SMTPResponseException(-1, "Response too long")
        except SMTPResponseException as exc:
            self._buffer.clear()
            self._error = exc
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        self._inner.eof_received()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)
        self._inner.connection_lost(exc)  # aiosmtplib forgets the connection

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # ---------------------------------------------------------------- helpers

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> SMTPResponse | None:
        """Take one complete reply off the buffer, or ``None`` if none is complete."""
        offset = 0
        texts: list[bytes] = []
        code = -1
        while (end := self._buffer.find(b"\n", offset)) != -1:
            line = bytes(self._buffer[offset : end + 1])
            if len(line) > MAX_LINE:
                raise SMTPResponseException(-1, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                text = line.decode("utf-8", errors="ignore")
                raise SMTPResponseException(-1, f"Malformed SMTP response line: {text}") from None
            offset = end + 1
            texts.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                del self._buffer[:offset]
                return SMTPResponse(code, b"\n".join(texts).decode("utf-8", "surrogateescape"))
        return None
