"""Make a stored message fit what one upstream accepts, its decoded content unchanged.

Two limits of the SMTP wire can make a message that Sluice accepted
unsendable as stored:

* a text line is at most 998 octets plus CRLF (RFC 5321 § 4.5.3.1.6; the
  dot added for transparency does not count). PHP's ``mail()`` with unwrapped
  HTML easily writes longer ones;
* without the 8BITMIME extension a message must be 7-bit (RFC 6152 § 3).

``fits`` answers in two C-level passes whether a message can go as it is
(the common case: it then goes out byte for byte as stored); ``convert``
rewrites only the MIME entities that do not fit, the way RFC 6152 § 3 tells
a relay to downgrade: a leaf part is re-encoded (quoted-printable for text,
base64 for the rest), so a mail client decodes exactly the bytes it would
have decoded before; a multipart or ``message/rfc822`` part is entered and
only its offending children change; a header field is folded at whitespace
(unfolding restores it) or, when it holds 8-bit text and 7-bit is required,
written as RFC 2047 encoded words (RFC 2231 for parameters, through the
stdlib ``email`` policy where it round-trips). Untouched entities, fields and
delimiters keep their bytes.

Decisions where the RFCs leave room:

* Line endings are made CRLF first, and a missing last one is added, as
  ``message.wire_data`` does for every message it sends: the conversion works
  on the wire form.
* A part without Content-Type is ``text/plain; charset=us-ascii`` (RFC 2045
  § 5.2), which 8-bit text cannot be. When such a part is re-encoded it gets
  ``charset=utf-8`` if its bytes are valid UTF-8 (what the sender meant,
  almost always) and ``charset=unknown-8bit`` (RFC 1428) otherwise; a
  top-level entity that is re-encoded gets ``MIME-Version: 1.0`` when it had
  none, or the Content-Transfer-Encoding would not count (RFC 2045 § 4).
* An unknown Content-Transfer-Encoding (``x-uuencode``...) is taken as the
  identity: its raw bytes are the content that gets base64-encoded.
* The preamble and epilogue of a multipart are not content (RFC 2046 § 5.1.1
  says to ignore them): if one does not fit it is dropped.
* Header fields are made 7-bit only where the whole message must be (no
  8BITMIME). Strictly, RFC 6532 wants SMTPUTF8 for raw UTF-8 in a header,
  but servers that offer 8BITMIME take them in practice, and re-encoding
  every such message would break "bytes preserved" for nothing.
* What cannot be converted raises ``Unconvertible`` with the reason, so the
  caller fails the message with it instead of sending something a server
  would refuse or truncate: a multipart whose boundary is missing or never
  occurs. A non-multipart body is always convertible (re-encoded as one
  part), and so is every header field (as encoded words if need be).

``to_ascii_address`` is the envelope's counterpart for servers without
SMTPUTF8: a domain that is the only non-ASCII part becomes its A-label.
"""

from __future__ import annotations

import binascii
import email.parser
import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message

from relay.address import domain_to_ascii
from relay.errors import SluiceError
from relay.message import bare_line_ending, field_name

__all__ = [
    "MAX_LINE",
    "Converted",
    "Unconvertible",
    "ascii_envelope",
    "convert",
    "fits",
    "lines_fit",
    "longest_line",
    "prepare",
    "to_ascii_address",
]

#: RFC 5321 § 4.5.3.1.6: 1000 octets with the CRLF.
MAX_LINE = 998

_LINE_ENDING = re.compile(rb"\r\n|\n|\r")
# email.feedparser's rule for where a header block ends (a line that is not a field,
# a continuation or the mbox "From "): an entity is split as the email parser that
# reads its Content-Type splits it. A field's name is relay.message.field_name.
_HEADER_LINE = re.compile(rb"(?:From |[\041-\071\073-\176]*:|[ \t])")
_WSP_AFTER_CRLF = re.compile(rb"\r\n(?=[ \t])")
_ENCODED = email.policy.SMTP.clone(refold_source="all", utf8=False, max_line_length=78)
_HEADERS = email.parser.BytesHeaderParser(policy=email.policy.compat32)
# RFC 2045 § 6.2: what the identity encodings may be called.
_IDENTITY = frozenset({"7bit", "8bit", "binary"})


class Unconvertible(SluiceError, ValueError):
    """The message cannot be made to fit; ``reason`` says why (for the delivery log)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Converted:
    """What to send, and what was changed to get there (empty: ``data`` is the input)."""

    data: bytes
    changes: tuple[str, ...] = ()


#: ``longest_line`` splits this much at a time: the list of lines of a whole
#: 25 MB message cost 40 MB more (a bytes object per line), for a moment
SPLIT_CHUNK = 1 << 20


def longest_line(data: bytes, *, chunk: int = SPLIT_CHUNK) -> int:
    """Length of the longest line of ``data``, any line ending (CRLF, LF, CR) excluded.

    Split about ``chunk`` bytes at a time, each piece ending just after an LF
    (always the end of a line, a CRLF's included), so that a large message
    never has all its lines in memory at once; a small one is one piece.
    """
    longest, start, size = 0, 0, len(data)
    while start < size:
        end = data.find(b"\n", start + chunk)
        end = size if end < 0 else end + 1
        piece = data if start == 0 and end == size else data[start:end]
        longest = max(longest, max(map(len, piece.splitlines()), default=0))
        start = end
    return longest


def lines_fit(data: bytes, limit: int = MAX_LINE) -> bool:
    """Whether no line of ``data`` is longer than ``limit``, line endings excluded.

    ``longest_line(data) <= limit``, without visiting every line: from the
    start of a line, the window of the next ``limit + 1`` bytes must hold a
    CR or an LF (else that line is longer), and the next window starts after
    the last one found there. Every line that starts in a window ends inside
    it, so each step checks all of them with two C-level searches (CR, LF)
    and moves about a window ahead: about 100 steps for 100 KB (36 µs), where
    splitting it into lines made a bytes object of each (101 µs, 13 % of the
    daemon's event loop at 100 KB: the check every delivery pays).
    """
    window, start, size = limit + 1, 0, len(data)
    while size - start >= window:
        end = start + window
        last = max(data.rfind(b"\n", start, end), data.rfind(b"\r", start, end))
        if last < 0:
            return False
        start = last + 1
    return True  # what is left is shorter than a window


def fits(data: bytes, *, eight_bit: bool) -> bool:
    """Whether ``data`` can go on the wire as it is (C-level passes only).

    Args:
        data: the message.
        eight_bit: the server offered 8BITMIME (else every byte must be 7-bit).
    """
    return (eight_bit or data.isascii()) and lines_fit(data)


def prepare(data: bytes, *, eight_bit: bool) -> Converted:
    """``data`` itself when it fits, else ``convert(data)``. Raises ``Unconvertible``."""
    if fits(data, eight_bit=eight_bit):
        return Converted(data)
    return convert(data, eight_bit=eight_bit)


def convert(data: bytes, *, eight_bit: bool) -> Converted:
    """Re-encode what does not fit; every line ≤ 998 octets, 7-bit unless ``eight_bit``.

    Raises:
        Unconvertible: see the module docstring.
    """
    if bare_line_ending(data) is not None:
        data = _LINE_ENDING.sub(b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"  # as on the wire: the last line always ends (RFC 5321 § 4.1.1.4)
    changes: list[str] = []
    out = _Converter(eight_bit, changes).entity(data, "1", "text/plain", top=True)
    if not fits(out, eight_bit=eight_bit):  # a bug, not the sender's: never send it
        raise Unconvertible("conversion left a line too long or an 8-bit byte")
    return Converted(out, tuple(changes))


# ------------------------------------------------------------------ entities


def _split_entity(raw: bytes) -> tuple[list[bytes], bytes, bytes]:
    """``(fields, separator, body)``: fields keep their CRLFs and continuation lines.

    The header block ends at the first blank line (the separator) or, as the
    ``email`` parser has it, at the first line that is not a header line.
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        end = len(raw) if end < 0 else end + 2
        line = raw[pos:end]
        if line in (b"\r\n", b""):
            return fields, line, raw[end:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _HEADER_LINE.match(line) and b":" in line:
            fields.append(line)
        else:
            return fields, b"", raw[pos:]
        pos = end
    return fields, b"", b""


class _Converter:
    """One conversion: the target (``eight_bit``) and the list of changes made."""

    def __init__(self, eight_bit: bool, changes: list[str]) -> None:
        self.eight_bit = eight_bit
        self.changes = changes

    def fits(self, data: bytes) -> bool:
        return fits(data, eight_bit=self.eight_bit)

    def entity(self, raw: bytes, path: str, default_type: str, *, top: bool = False) -> bytes:
        """One MIME entity (a header block, then a body), converted where it does not fit."""
        if self.fits(raw):
            return raw
        fields, sep, body = _split_entity(raw)
        new_fields = [self.field(f, path) for f in fields]
        msg: Message = _HEADERS.parsebytes(b"".join(fields) + b"\r\n")
        msg.set_default_type(default_type)
        ctype = msg.get_content_type()
        declared = msg.get("content-transfer-encoding")
        cte = str(declared or "7bit").strip().lower()
        new_body = body
        set_cte: str | None = None
        if self.fits(body):
            pass
        elif ctype.startswith("multipart/"):
            new_body = self.multipart(msg, body, path, ctype)
            # RFC 2045 § 6.4: a multipart is never encoded; an 8bit/binary label goes.
            if not self.eight_bit and cte in ("8bit", "binary"):
                set_cte = "7bit"
        elif ctype in ("message/rfc822", "message/global") and cte in _IDENTITY:
            # RFC 2046 § 5.2.1: never encoded as a whole; its own parts are.
            new_body = self.entity(body, f"{path}.1", "text/plain", top=True)
            if not self.eight_bit and cte != "7bit":
                set_cte = "7bit"
        else:
            new_body, set_cte = self.leaf(body, cte, ctype, path, declared=declared is not None)
            if "content-type" not in msg and not body.isascii():
                charset = "utf-8" if _is_utf8(body) else "unknown-8bit"
                new_fields.append(f"Content-Type: text/plain; charset={charset}\r\n".encode())
                self.changes.append(f"part {path}: declared charset={charset}")
            if top and "mime-version" not in msg:
                new_fields.append(b"MIME-Version: 1.0\r\n")
        if set_cte is not None:
            header = f"Content-Transfer-Encoding: {set_cte}\r\n".encode()
            names = [field_name(f) for f in new_fields]
            if "content-transfer-encoding" in names:
                new_fields[names.index("content-transfer-encoding")] = header
            else:
                new_fields.append(header)
        if new_fields != fields and not sep and new_body:
            sep = b"\r\n"  # the body began at a non-header line: keep it the body
        return b"".join(new_fields) + sep + new_body

    def field(self, field: bytes, path: str) -> bytes:
        """A header field folded (or encoded) to fit; the field itself when it does."""
        if self.fits(field):
            return field
        name = field_name(field)
        if field.isascii():
            folded = _fold(field)
            if folded is not None:
                self.changes.append(f"part {path}: folded header {name}")
                return folded
        raw_name, value = field.split(b":", 1)
        value = _WSP_AFTER_CRLF.sub(b"", value).strip()
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            # Not UTF-8: its bytes as words of charset unknown-8bit (RFC 1428).
            encoded = _words(raw_name, value, "unknown-8bit")
        else:
            encoded = _encode_utf8(raw_name.decode("ascii", "replace"), text)
        if not self.fits(encoded):
            raise Unconvertible(f"header {name} cannot be folded to {MAX_LINE} octets")
        self.changes.append(f"part {path}: encoded header {name} (RFC 2047)")
        return encoded

    def multipart(self, msg: Message, body: bytes, path: str, ctype: str) -> bytes:
        boundary = msg.get_boundary()
        if not boundary:
            raise Unconvertible(f"part {path}: {ctype} has no boundary and does not fit")
        delimiter = re.compile(
            rb"(?:\A|\r\n)--"
            + re.escape(boundary.encode("utf-8", "surrogateescape"))
            + rb"(--)?[ \t]*(?:\r\n|\Z)"
        )
        child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
        out: list[bytes] = []
        pos, number, closed = 0, 0, False
        for match in delimiter.finditer(body):
            chunk = body[pos : match.start()]
            if number == 0:
                out.append(self.filler(chunk, path, "preamble"))
            else:
                out.append(self.entity(chunk, f"{path}.{number}", child_type))
            out.append(match.group(0))
            pos, number = match.end(), number + 1
            if match.group(1):
                closed = True
                break
        if number == 0:
            raise Unconvertible(f"part {path}: {ctype} boundary never occurs and it does not fit")
        rest = body[pos:]
        if closed:
            out.append(self.filler(rest, path, "epilogue"))
        else:  # no close delimiter: the last part runs to the end, as email reads it
            out.append(self.entity(rest, f"{path}.{number}", child_type))
        return b"".join(out)

    def filler(self, chunk: bytes, path: str, what: str) -> bytes:
        """A preamble or epilogue: kept if it fits, else dropped (RFC 2046 § 5.1.1)."""
        if self.fits(chunk):
            return chunk
        self.changes.append(f"part {path}: dropped the {what} (not content; did not fit)")
        return b""

    def leaf(
        self, body: bytes, cte: str, ctype: str, path: str, *, declared: bool = True
    ) -> tuple[bytes, str]:
        """A body re-encoded; returns it with its new Content-Transfer-Encoding.

        ``declared``: whether the part has a Content-Transfer-Encoding header.
        Without one it is read as 7bit (RFC 2045 § 6.1), but the change line
        says "no encoding header": "7bit -> ..." for 8-bit content read as if
        the part had claimed 7bit.
        """
        if cte == "base64":
            content = binascii.a2b_base64(body)  # non-strict: skips what is not base64
        elif cte == "quoted-printable":
            content = binascii.a2b_qp(body)
        else:
            content = body
        # Quoted-printable keeps text readable, but its line breaks are CRLFs:
        # a decoded body with a bare CR or LF (from base64) can only go as base64.
        text = (
            ctype.startswith("text/")
            or (ctype.startswith("message/") and ctype not in ("message/rfc822", "message/global"))
        ) and bare_line_ending(content) is None
        longest = longest_line(body)
        why = f"line of {longest} octets" if longest > MAX_LINE else "8-bit"
        if text:
            encoded, new = _qp(content), "quoted-printable"
        else:
            encoded, new = _base64(content), "base64"
        was = cte if declared else "no encoding header"
        self.changes.append(f"part {path} {ctype}: {was} -> {new} ({why})")
        return encoded, new


def _fold(field: bytes) -> bytes | None:
    """``field`` with a CRLF inserted before whitespace so that every line fits.

    RFC 5322 § 2.2.3: unfolding removes exactly the CRLFs folding adds.
    ``None`` when a stretch of more than 998 octets has no whitespace.
    """
    lines = field[:-2].split(b"\r\n") if field.endswith(b"\r\n") else field.split(b"\r\n")
    out: list[bytes] = []
    for line in lines:
        while len(line) > MAX_LINE:
            # the last whitespace that leaves a non-empty first piece within the limit
            cut = max(line.rfind(b" ", 1, MAX_LINE + 1), line.rfind(b"\t", 1, MAX_LINE + 1))
            if cut <= 0 or not line[:cut].strip():
                return None
            out.append(line[:cut])
            line = line[cut:]
        out.append(line)
    return b"\r\n".join(out) + b"\r\n"


#: fields with structure the ``email`` policy knows how to encode part by part
_STRUCTURED = frozenset(
    {
        "from", "to", "cc", "bcc", "reply-to", "sender",
        "resent-from", "resent-to", "resent-cc", "resent-bcc", "resent-sender",
        "content-type", "content-disposition",
    }
)  # fmt: skip


def _encode_utf8(name: str, text: str) -> bytes:
    """A field with UTF-8 text in 7-bit: its structure kept where the stdlib can.

    For addresses the ``email`` policy encodes only the display names, and
    for MIME parameters it writes RFC 2231; its result is used only if it
    reads back as the same text (its folder can drop a space between two
    encoded words, and raises on some malformed values). Anything else is
    written as encoded words of the whole value, which decode exactly.
    """
    if name.lower() in _STRUCTURED:
        try:
            folded: str = _ENCODED.fold(name, text)
            back = email.message_from_string(folded + "\r\n", policy=email.policy.default)
            if folded.isascii() and _text(str(back[name])) == _text(text):
                return folded.encode("ascii")
        except Exception:  # any failure of its parser: the words below always work
            pass
    return _words(name.encode("ascii"), text.encode("utf-8"), "utf-8")


def _text(value: str) -> str:
    return " ".join(value.split())


def _words(name: bytes, value: bytes, charset: str) -> bytes:
    """``name: value`` as RFC 2047 "B" words, one per line, each of whole characters.

    Whitespace between encoded words is not content (RFC 2047 § 6.2), so
    every byte of ``value``, spaces included, goes inside the words.
    """
    words: list[bytes] = []
    pos = 0
    while pos < len(value):
        end = min(pos + 45, len(value))
        if charset == "utf-8":
            while end < len(value) and end > pos + 1 and value[end] & 0xC0 == 0x80:
                end -= 1  # never inside a UTF-8 sequence (RFC 2047 § 5 (3))
        chunk = binascii.b2a_base64(value[pos:end], newline=False)
        words.append(b"=?" + charset.encode("ascii") + b"?b?" + chunk + b"?=")
        pos = end
    return name + b": " + b"\r\n ".join(words) + b"\r\n"


def _qp(content: bytes) -> bytes:
    """Quoted-printable for text (RFC 2045 § 6.7): CRLFs stay line breaks."""
    encoded = binascii.b2a_qp(content, quotetabs=False, istext=True, header=False)
    if b"\r\n" not in content:
        # b2a_qp breaks soft lines with the content's own line ending, LF when it has none.
        encoded = encoded.replace(b"\n", b"\r\n")
    if encoded and not encoded.endswith(b"\r\n"):
        # A soft break: the line break SMTP adds at the end is not content.
        encoded += b"=\r\n"
    return encoded


def _base64(content: bytes) -> bytes:
    """base64 in lines of 76 characters (RFC 2045 § 6.8), CRLF-ended."""
    return b"".join(
        binascii.b2a_base64(content[i : i + 57], newline=False) + b"\r\n"
        for i in range(0, len(content), 57)
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ------------------------------------------------------------------ envelope


def to_ascii_address(addr: str) -> str | None:
    """``addr`` with an IDNA 2008 A-label domain, for a server without SMTPUTF8.

    The address itself when it is ASCII; ``None`` when it cannot be written
    in ASCII (a non-ASCII local part, or a domain that is not a valid IDN).
    The domain is written by ``relay.address.domain_to_ascii`` (UTS #46, then
    IDNA 2008), the one IDNA rule of Sluice.
    """
    if addr.isascii():
        return addr
    local, at, domain = addr.rpartition("@")
    if not at or not local.isascii() or domain.startswith("["):
        return None
    ace = domain_to_ascii(domain)
    return None if ace is None else f"{local}@{ace}"


def ascii_envelope(sender: str, recipients: Sequence[str]) -> tuple[str, list[str]]:
    """Each address as ``to_ascii_address`` writes it, or unchanged when it cannot."""
    return (
        to_ascii_address(sender) or sender,
        [to_ascii_address(r) or r for r in recipients],
    )
