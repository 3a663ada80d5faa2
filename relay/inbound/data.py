"""Read an SMTP DATA body in chunks, with memory bounded per connection.

aiosmtpd reads DATA with one ``readuntil(b"\\r\\n")`` per line: 1,300 awaits
for a 100 KB message, most of Sluice's accept CPU on large mail. This reader
asks the stream for everything up to the next ``".\\r\\n"`` (or, past the
stream limit, for everything buffered) and works on the whole body at once,
in C (``bytes.count``, ``bytes.replace``):

* the body ends at a line holding only ``"."``; that line is not content;
* a leading ``"."`` is removed from every line (RFC 5321 § 4.5.2);
* more than ``size_limit`` bytes (dot-stuffing included, the end line
  excluded) means ``552``; the rest is read and discarded (§ 4.2.5: the
  reply comes after the end of data).

Lines of any length are accepted and kept byte for byte. aiosmtpd answers
``500 Line too long`` at 1,001 octets; Postfix accepts them, and so must a
relay for PHP's ``mail()`` and other senders of unwrapped HTML: a 5xx there
loses the mail. (RFC 5321 § 4.5.3.1.6 limits what a *sender* may send; the
delivery side re-wraps what a provider would refuse.)

Memory: a client could start DATA and never end it. Above ``spill_over``
bytes the body goes to an unlinked temporary file (written in a thread), so
an open DATA holds at most ``spill_over`` bytes of memory however long it
runs; past ``size_limit`` nothing more is kept at all. Only a complete
message is read back, once, to be stored.

The same count tells whether every line ends in CRLF, which the listener
would otherwise find out with a pass of its own over the body.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import IO, NamedTuple

__all__ = ["R_TOO_MUCH_DATA", "SPILL_OVER", "Data", "read_data"]

R_TOO_MUCH_DATA = "552 5.3.4 Error: Too much mail data"

#: bytes of an unfinished DATA kept in memory before the rest goes to a temporary file
SPILL_OVER = 256 * 1024

_END = b".\r\n"
#: what stays in memory when the rest moves out: enough to find "\r\n.\r\n"
_TAIL = 8


class Data(NamedTuple):
    """What ``read_data`` read: the content, or the reply refusing it."""

    content: bytes
    error: str | None
    #: No bare CR or LF: every line of the content ends in CRLF.
    crlf_only: bool = False


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, spill_over: int = SPILL_OVER
) -> Data:
    """Read up to the end-of-data line; return ``Data(content, None, ...)`` or ``(b"", error)``.

    Raises ``asyncio.IncompleteReadError`` if the stream ends first.
    """
    # A virtual CRLF stands for the one that ended the DATA command, so that a
    # lone "." on the first line ends the body like on any other line.
    buf = bytearray(b"\r\n")
    moved = 0  # bytes no longer in buf: in the spill file, or dropped
    over = False  # past size_limit: nothing more is kept
    spill: IO[bytes] | None = None
    try:
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
            if len(buf) <= spill_over:
                continue
            # Keep only a tail to find the end line in; the rest goes to the
            # spill file, or nowhere once the reply will be 552 anyway.
            head = bytes(memoryview(buf)[:-_TAIL])
            del buf[:-_TAIL]
            moved += len(head)
            if not over and size_limit and moved - 2 > size_limit:
                over = True
                if spill is not None:
                    spill.close()  # an unlinked file: its blocks are freed
                    spill = None
            if not over:
                if spill is None:
                    spill = await asyncio.to_thread(_spill_file)
                await asyncio.to_thread(spill.write, head)
        size = moved + len(buf) - 5
        if over or (size_limit and size > size_limit):
            return Data(b"", R_TOO_MUCH_DATA)
        if spill is not None:
            # Straight into one buffer of the final size: ``spill.read()``
            # would hold the file twice (its chunks, then their join) and
            # ``bytearray`` of it a third time (a 25 MB message took 100 MB).
            whole = bytearray(moved + len(buf))
            await asyncio.to_thread(_read_back, spill, whole, moved)
            whole[moved:] = buf
            buf = whole
            del whole  # ``buf`` alone holds it, so that it can go below
    finally:
        if spill is not None:
            spill.close()
    # A line starting with "." before the end line (whose own "\r\n." must
    # not count, or every body would be copied twice more for nothing).
    if buf.find(b"\r\n.", 0, len(buf) - 3) < 0:
        body = bytes(memoryview(buf)[2:-3])
    else:
        # Undo dot-stuffing: drop the first "." of every line that has one.
        # Only dots go, so the line endings stay as they were. (One copy
        # alive beside ``buf`` at a time.)
        del buf[-3:]
        unstuffed = buf.replace(b"\r\n.", b"\r\n")
        del buf
        body = bytes(memoryview(unstuffed)[2:])
    return Data(body, None, _crlf_only(body))


def _read_back(spill: IO[bytes], into: bytearray, size: int) -> None:
    """Fill the first ``size`` bytes of ``into`` from the start of ``spill`` (all it holds).

    Every view of ``into`` is released before this returns: the caller then
    resizes it, which a view still alive would forbid.
    """
    spill.seek(0)
    done = 0
    with memoryview(into) as whole:
        while done < size:
            with whole[done:size] as rest:
                n = spill.readinto(rest)  # type: ignore[attr-defined]
            if not n:
                raise OSError("the spill file of a DATA body is shorter than what was written")
            done += n


def _spill_file() -> IO[bytes]:
    return tempfile.TemporaryFile(prefix="sluice-data-")


def _crlf_only(body: bytes) -> bool:
    """Whether every CR and every LF of ``body`` is part of a CRLF, in three C-level counts.

    "\\r\\n" cannot overlap itself, so as many CRLFs as CRs means every CR is
    followed by an LF, and as many as LFs that every LF follows a CR.
    """
    crlf = body.count(b"\r\n")
    return crlf == body.count(b"\r") == body.count(b"\n")
