"""Read an SMTP DATA body in chunks instead of one await per line.

aiosmtpd reads DATA with one ``readuntil(b"\\r\\n")`` per line: 1,300 awaits
for a 100 KB message, most of Sluice's accept CPU on large mail. This reader
asks the stream for everything up to the next ``".\\r\\n"`` (or, past the
stream limit, for everything buffered) and checks the line rules on the whole
body at once, in C (``bytes.split``, ``bytes.replace``), with the same results
as aiosmtpd 1.4:

* the body ends at a line holding only ``"."``; that line is not content;
* a line longer than ``line_limit`` (CRLF excluded) means ``500``;
* more than ``size_limit`` bytes (dot-stuffing included, the end line
  excluded) means ``552``; in both cases the rest is read and discarded;
* a leading ``"."`` is removed from every line (RFC 5321 § 4.5.2).

The same scan tells whether every line ends in CRLF, which the listener
would otherwise find out with a pass of its own over the body.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

__all__ = ["R_LINE_TOO_LONG", "R_TOO_MUCH_DATA", "Data", "read_data"]

R_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
R_TOO_MUCH_DATA = "552 Error: Too much mail data"

_END = b".\r\n"


class Data(NamedTuple):
    """What ``read_data`` read: the content, or the reply refusing it."""

    content: bytes
    error: str | None
    #: No bare CR or LF: every line of the content ends in CRLF.
    crlf_only: bool = False


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> Data:
    """Read up to the end-of-data line; return ``Data(content, None, ...)`` or ``(b"", error)``.

    Raises ``asyncio.IncompleteReadError`` if the stream ends first.
    """
    # A virtual CRLF stands for the one that ended the DATA command, so that a
    # lone "." on the first line ends the body like on any other line.
    buf = bytearray(b"\r\n")
    dropped = 0  # bytes discarded after the size limit was passed
    while True:
        try:
            buf += await reader.readuntil(_END)
        except asyncio.LimitOverrunError as exc:
            # No ".\r\n" within the stream limit: take what is buffered. The
            # last bytes (a possible start of ".\r\n") stay in the stream.
            buf += await reader.read(exc.consumed)
        else:
            if buf[-5:-3] == b"\r\n":
                break
        if size_limit and len(buf) - 2 > size_limit + 4096:
            # Over the limit: keep only a tail to find the end line in; the
            # reply will be 552 whatever the rest holds.
            dropped += len(buf) - 8
            del buf[:-8]
    size = dropped + len(buf) - 5
    if dropped or (size_limit and size > size_limit):
        return Data(b"", R_TOO_MUCH_DATA)
    body = bytes(memoryview(buf)[2:-3])
    longest, crlf_only = _scan_lines(body)
    if longest > line_limit:
        return Data(b"", R_LINE_TOO_LONG)
    # A line starting with "." before the end line (whose own "\r\n." must
    # not count, or every body would be copied twice more for nothing).
    if buf.find(b"\r\n.", 0, len(buf) - 3) >= 0:
        # Undo dot-stuffing: drop the first "." of every line that has one.
        # Only dots go, so the line endings stay as they were scanned.
        body = bytes(memoryview(buf)[:-3]).replace(b"\r\n.", b"\r\n")[2:]
    return Data(body, None, crlf_only)


def _scan_lines(body: bytes) -> tuple[int, bool]:
    """``(longest line, CRLF only)`` for ``body``, in four C-level passes.

    ``splitlines`` breaks at CRLF, CR and LF alike, so its count of line
    breaks equals both the count of CRs and that of LFs only when every break
    is a CRLF (a bare CR adds a break and a CR, a bare LF a break and an LF).
    A line's length excludes its CRLF; with bare line endings aiosmtpd's rule
    (lines end at CRLF only) decides, as before.
    """
    if not body:
        return 0, True
    lines = body.splitlines()
    breaks = len(lines) - (body[-1] not in b"\r\n")
    if breaks == body.count(b"\n") == body.count(b"\r"):
        return max(map(len, lines)), True
    return max(map(len, body.split(b"\r\n"))), False
