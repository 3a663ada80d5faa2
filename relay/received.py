"""Sluice's ``Received:`` line (RFC 5321 § 4.4): written once, and read back from a bounce.

A message starts with one trace line Sluice wrote, whichever way it came
in: over SMTP (the listener), from ``sluice sendmail`` writing the spool
itself while the daemon is down, or as a DSN Sluice builds. When
that message bounces, the report returns its header (RFC 3464, RFC 6522),
and ``queue_id_from_received`` finds the queue ID in Sluice's line, so a
bounce is matched to its message without VERP. The writer and the reader
live here together, built from the same words, and
``tests/unit/test_received.py`` round-trips every shape the writer makes.

The shapes, the ``by`` clause being what the reader reads::

    Received: from HELO ([CLIENT-IP])
    \tby HOST (Sluice) with ESMTP id 0190F2A3B4C5D6E7
    \tfor <one@recipient>; DATE

    Received: by HOST (Sluice sendmail, uid 1000) with local id 0190F2A3B4C5D6E7;
    \tDATE

    Received: by HOST (Sluice) with local id 0190F2A3B4C5D6E7
    \tfor <original@sender>; DATE

(the last one a DSN's, whose only recipient is the original sender).

``with local`` is how Exim names a local submission; RFC 5321's grammar
allows any atom there. The queue ID is 16 upper-case hex digits
(``relay.store.spool.new_queue_id``).

No library writes or parses trace fields: the stdlib ``email`` package
treats Received as unstructured text, and a regex on the returned header
block is what the bounce reader needs (it also finds the line when a remote
MTA unfolded it).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

from relay.address import domain_to_ascii

__all__ = ["SOFTWARE", "helo_name", "queue_id_from_received", "received_header"]

#: the comment after ``by HOST`` that marks a trace line as Sluice's
SOFTWARE = "Sluice"
_LOCAL = "sendmail"

_UNSAFE = re.compile(r"[^\x21-\x7e]")
# C0 and C1 controls, DEL, and lone surrogates (undecodable bytes from the wire).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_NON_ASCII = re.compile(r"[^\x20-\x7e]")

#: ``(Sluice) with ESMTP id QUEUEID`` or ``(Sluice sendmail, uid 1000) with local id QUEUEID``
_SLUICE_BY = re.compile(
    rb"\(" + SOFTWARE.encode() + rb"(?: " + _LOCAL.encode() + rb", uid \d+)?\)"
    rb"\s+with\s+[!-~]+\s+id\s+([0-9A-F]{16})\b"
)


def _helo_char(char: str) -> str:
    """One character of a HELO name as kept: ``\\xHH`` names a byte, ``\\uHHHH`` a character.

    aiosmtpd decodes arguments with ``surrogateescape``, so an undecodable
    byte 0xHH arrives as U+DCHH and is written ``\\xHH``. A character that
    is not printable (``str.isprintable``: controls, format characters such
    as U+200E, line and paragraph separators...) is written by its code
    point, so that U+0085 sent as UTF-8 never reads as the byte 0x85.
    """
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if char.isprintable():
        return char
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def helo_name(name: str) -> str:
    """The client's HELO/EHLO name as Sluice keeps it: every byte it sent, none that hurts.

    Sluice accepts any HELO name, as Postfix does unless
    ``smtpd_helo_restrictions`` say otherwise: the name is the client's
    claim, recorded for people to read, never trusted, and refusing a
    local application over it would lose its mail for no gain. What is
    kept must still be storable (the spool's ``helo`` column is UTF-8 text,
    which a lone surrogate is not) and safe in logs and headers, so an
    undecodable byte becomes ``\\xHH``, a character that is not printable
    ``\\xHH`` or ``\\uHHHH`` (``_helo_char``), and a backslash ``\\\\``.
    Unlike Postfix's ``?`` for each such byte, this loses nothing: ``h\\xff``
    on the wire and ``h`` + byte 0xFF stay distinguishable. Printable UTF-8
    is kept as sent; the ``Received:`` line further reduces it to printable
    ASCII (``_token``).
    """
    if name.isprintable() and "\\" not in name:
        return name  # the usual case, kept without a copy
    return "".join(map(_helo_char, name))


def _token(text: str, limit: int = 255) -> str:
    """A header-safe rendering of a client-supplied word (HELO name, address)."""
    return _UNSAFE.sub("?", text)[:limit] or "unknown"


def received_header(
    *,
    hostname: str,
    queue_id: str,
    protocol: str,
    recipients: Sequence[str],
    now: float,
    helo: str | None = None,
    client_ip: str | None = None,
    local_uid: int | None = None,
    utf8: bool = False,
) -> bytes:
    """The trace header for one accepted message, folded, ending in CRLF.

    Args:
        hostname: this relay's name (the ``by`` clause).
        queue_id: the message's queue ID (the ``id`` clause, which the reader finds).
        protocol: the ``with`` clause: ``ESMTP``, ``SMTP``, ``UTF8SMTP``, or
            ``local`` for ``sluice sendmail``.
        recipients: the envelope recipients; ``for <addr>`` is given only for
            a single recipient, as Postfix does, so a Bcc list is not
            disclosed to every recipient.
        now: the date stamped on the line.
        helo: the client's HELO/EHLO name (``unknown`` when it sent none).
        client_ip: the SMTP client's address; ``None`` for a local submission,
            which has no ``from`` clause.
        local_uid: the user who ran ``sluice sendmail`` (a local submission).
        utf8: the message came with SMTPUTF8, so the ``for`` address is kept
            in UTF-8 (RFC 6532 allows it then); otherwise a non-ASCII domain
            is written as its A-label.

    Client-supplied words (HELO) lose anything but printable ASCII.
    """
    software = SOFTWARE if local_uid is None else f"{SOFTWARE} {_LOCAL}, uid {local_uid}"
    by = f"by {_token(hostname)} ({software}) with {_token(protocol)} id {queue_id}"
    if client_ip is None:
        parts = [f"Received: {by}"]
    else:
        parts = [f"Received: from {_token(helo or 'unknown')} ([{_token(client_ip)}])", f"\t{by}"]
    stamp = email.utils.formatdate(now, localtime=False, usegmt=False)
    if len(recipients) == 1:
        parts.append(f"\tfor <{_trace_address(recipients[0], utf8)}>; {stamp}")
    else:
        parts[-1] += ";"
        parts.append(f"\t{stamp}")
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")


def _trace_address(address: str, utf8: bool) -> str:
    """``address`` for the ``for <...>`` clause: intact but for line breaks and controls."""
    address = _CONTROL.sub("?", address)[:320]
    if utf8 or address.isascii():
        return address
    local, at, domain = address.rpartition("@")
    ace = domain_to_ascii(domain)
    return _NON_ASCII.sub("?", local) + at + (_NON_ASCII.sub("?", domain) if ace is None else ace)


def queue_id_from_received(data: bytes) -> str | None:
    """The queue ID in the first trace line ``received_header`` wrote found in ``data``.

    ``data`` is a header block (or a whole bounce, searched as bytes);
    folding and unfolding do not matter. ``None`` when no Sluice line is there.
    """
    match = _SLUICE_BY.search(data)
    return match.group(1).decode("ascii") if match else None
