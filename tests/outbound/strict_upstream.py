"""A strict upstream: aiosmtpd on loopback port 0 that enforces the wire limits to the letter.

Unlike ``tests/upstream.py`` (which takes whatever comes), this one refuses a
message with a line over 998 octets (RFC 5321 § 4.5.3.1.6; the dot added for
transparency does not count) and, when it does not offer 8BITMIME, any byte
over 0x7F (RFC 6152 § 3); it offers SMTPUTF8 only when told to. What it
accepted is in ``messages``, what it refused (and why) in ``refused``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.upstream import Received

__all__ = ["StrictUpstream"]

MAX_LINE = 998


class _StrictSMTP(SMTP):
    # Read lines far longer than the limit, so that the rule below (on the
    # content, after the transparency dots are removed) is the one that decides.
    line_length_limit = 1 << 16

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._offer_8bit = handler.up.eight_bit_mime

    async def push(self, status: AnyStr) -> None:
        # aiosmtpd always offers 8BITMIME (unless it decodes, and then it refuses
        # 8-bit data itself, before the handler could record why): leave it out.
        if not self._offer_8bit and status in ("250-8BITMIME", b"250-8BITMIME"):
            return
        await super().push(status)


@dataclass
class StrictUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    eight_bit_mime: bool = False
    smtputf8: bool = False
    messages: list[Received] = field(default_factory=list, repr=False)
    #: the reply to every DATA it refused
    refused: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = field(default=None, repr=False)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    __test__ = False

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Short, for hypothesis's report of a failing example (the messages can be MBs)."""
        printer.text(f"StrictUpstream(port={self.port}, eight_bit_mime={self.eight_bit_mime})")

    async def start(self) -> StrictUpstream:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _StrictSMTP(
                _Handler(self),
                hostname="strict.test",
                loop=loop,
                enable_SMTPUTF8=self.smtputf8,
            ),
            host=self.host,
            port=self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def wait_for(self, count: int, within: float = 20.0) -> list[Received]:
        """Until ``count`` messages arrived; raises at once when one was refused."""
        async with asyncio.timeout(within):
            async with self._changed:
                await self._changed.wait_for(
                    lambda: len(self.messages) >= count or bool(self.refused)
                )
        assert not self.refused, self.refused
        return self.messages

    async def _record(self, *, received: Received | None = None, refused: str = "") -> None:
        async with self._changed:
            if received is not None:
                self.messages.append(received)
            if refused:
                self.refused.append(refused)
            self._changed.notify_all()


class _Handler:
    def __init__(self, upstream: StrictUpstream) -> None:
        self.up = upstream

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not self.up.eight_bit_mime and any(o.upper() == "BODY=8BITMIME" for o in options):
            reply = "555 5.5.4 BODY=8BITMIME was not offered"
            await self.up._record(refused=reply)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        longest = max(map(len, data.split(b"\r\n")), default=0)
        reply = ""
        if longest > MAX_LINE:
            reply = f"500 5.5.2 line of {longest} octets (RFC 5321 4.5.3.1.6)"
        elif not self.up.eight_bit_mime and not data.isascii():
            reply = "554 5.6.0 8-bit data and no 8BITMIME was offered (RFC 6152)"
        elif b"\r" in data.replace(b"\r\n", b"") or b"\n" in data.replace(b"\r\n", b""):
            reply = "554 5.6.0 bare CR or LF"
        if reply:
            await self.up._record(refused=reply)
            return reply
        await self.up._record(
            received=Received(
                sender=envelope.mail_from or "",
                recipients=list(envelope.rcpt_tos),
                data=data,
                mail_options=list(envelope.mail_options),
                tls=False,
                login=None,
            )
        )
        return "250 2.0.0 OK strict"
