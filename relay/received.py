"""Pure helpers for what Sluice adds to, or reads from, a message's bytes.

Sluice never re-serialises a message: it prepends one ``Received:`` header
(RFC 5321 § 4.4) and otherwise stores and sends the bytes it was given.
"""

from __future__ import annotations

import email.header
import email.utils
import re

__all__ = [
    "bare_line_ending",
    "extract_subject",
    "received_header",
    "wire_data",
]

_UNSAFE = re.compile(r"[^\x21-\x7e]")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_SUBJECT = re.compile(rb"^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_LINE_ENDING = re.compile(rb"\r\n|\n|\r")
_SUBJECT_MAX = 200


def _token(text: str, limit: int = 255) -> str:
    """A header-safe rendering of a client-supplied word (HELO name, address)."""
    return _UNSAFE.sub("?", text)[:limit] or "unknown"


def received_header(
    *,
    helo: str | None,
    client_ip: str,
    hostname: str,
    queue_id: str,
    protocol: str,
    recipients: list[str],
    now: float,
) -> bytes:
    """The trace header for one accepted message, folded, ending in CRLF.

    ``for <addr>`` is given only for a single recipient, as Postfix does, so a
    Bcc list is not disclosed to every recipient.
    """
    parts = [f"Received: from {_token(helo or 'unknown')} ([{_token(client_ip)}])"]
    parts.append(f"\tby {_token(hostname)} (Sluice) with {protocol} id {queue_id}")
    stamp = email.utils.formatdate(now, localtime=False, usegmt=False)
    if len(recipients) == 1:
        parts.append(f"\tfor <{_token(recipients[0], 320)}>; {stamp}")
    else:
        parts[-1] += ";"
        parts.append(f"\t{stamp}")
    return ("\r\n".join(parts) + "\r\n").encode("utf-8", "surrogateescape")


def extract_subject(data: bytes) -> str:
    """The decoded Subject of a message, for the queue and log listings.

    Only the header block is read; a malformed encoded-word is shown as sent.
    """
    match = _HEADER_END.search(data)
    head = data[: match.start()] if match else data[:65536]
    found = _SUBJECT.search(head)
    if not found:
        return ""
    raw = re.sub(rb"\r?\n[ \t]", b" ", found.group(1)).decode("utf-8", "replace").strip()
    try:
        decoded = str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        decoded = raw
    return " ".join(decoded.split())[:_SUBJECT_MAX]


def bare_line_ending(data: bytes) -> int | None:
    """Offset of the first bare LF or bare CR, or ``None`` when every line ends in CRLF.

    A bare line ending is what SMTP smuggling (CVE-2023-51764) relies on.
    Data whose line endings are all CRLF holds exactly as many CRs and LFs as
    CRLF pairs: ``bytes.count`` checks that in C, and the regex scan (14% of
    the accept CPU with 2 KB messages) runs only when the counts differ.
    """
    crlf = data.count(b"\r\n")
    if data.count(b"\n") == crlf and data.count(b"\r") == crlf:
        return None
    match = _BARE.search(data)
    return match.start() if match else None


def wire_data(data: bytes, *, crlf_only: bool = False) -> tuple[bytes, bytes]:
    """``data`` as it goes on the wire after DATA: dot-stuffed, CRLF, ended by ``".\\r\\n"``.

    Every line ending becomes CRLF, a final one is added if missing, and a
    line starting with "." gets a second one (RFC 5321 § 4.5.2), exactly as
    aiosmtplib does. Its regexes cost a fifth of the delivery CPU on 100 KB
    messages; here a CRLF-clean body (all of them unless ``bare_line_endings:
    accept``) takes two C-level passes, ``bytes.count`` and ``bytes.replace``.

    Returned as two pieces to write in turn, the body and the end line, so
    that a body with nothing to change goes out without being copied.
    ``crlf_only=True`` (the listener found every line ending a CRLF when it
    accepted the message) skips the search for bare line endings.
    """
    if not crlf_only and bare_line_ending(data) is not None:
        data = _LINE_ENDING.sub(b"\r\n", data)
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        return stuffed, b"\r\n.\r\n"
    return stuffed, b".\r\n"
