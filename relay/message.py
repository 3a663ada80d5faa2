"""Bytes-level helpers shared by both sides: what Sluice adds to, reads or rewrites in a message.

Sluice never re-serialises a message. On the way in it prepends one
``Received:`` header (RFC 5321 § 4.4; written and read back by
``relay.received``) and reads the Subject for its listings;
on the way out it may rewrite the header block for one provider (``send_from``
and the ``X-Sluice-Provider`` header, never the stored bytes) and writes the
body in its wire form (CRLF, dot-stuffed).

The header block is found and split once per delivery attempt
(``HeaderBlock(data)``); routing and the rewrite read that same view.

``send_from`` (with ``send_from_name``): providers such as SES or Gmail only
accept mail from a verified address. The envelope sender becomes
``send_from``, the From header becomes ``send_from_name <send_from>``, and the
original From is kept as Reply-To when the message has none, so replies still
reach the original author.
"""

from __future__ import annotations

import email.errors
import email.header
import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.header import Header
from email.utils import formataddr

__all__ = [
    "PROVIDER_HEADER",
    "HeaderBlock",
    "HeaderEdit",
    "bare_line_ending",
    "edit_headers",
    "extract_subject",
    "field_name",
    "field_value",
    "header_end",
    "rewrite",
    "stream_name",
    "stream_of",
    "wire_data",
]

PROVIDER_HEADER = "X-Sluice-Provider"

#: a header field's first line: its name (printable ASCII but ":"), then ":",
#: with blanks before the colon allowed as RFC 5322 § 4.5 (obs-optional) does
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")

# ------------------------------------------------------------- the header block


def header_end(data: bytes) -> int:
    """Length of the header block, its last CRLF included.

    Without a blank line the whole message counts as header; a message that
    starts with one has none.
    """
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end + 2
    return 0 if data.startswith(b"\r\n") else len(data)


def field_name(field: bytes) -> str:
    """The lower-cased name of a header field (its first line is enough); '' when not a field.

    The one rule for what a field name is, used wherever Sluice reads a
    header by hand: the header block here, ``sluice sendmail``'s input
    (``relay.inbound.sendmail_args``) and the MIME entities
    ``relay.outbound.transfer`` re-encodes.
    """
    match = _FIELD_NAME.match(field)
    return match.group(1).decode("ascii").lower() if match else ""


def field_value(field: bytes) -> bytes:
    """The raw value of a header field: what follows the colon, outer blanks and CRLF removed.

    Folding inside the value is left as it is; ``HeaderBlock.value`` unfolds.
    """
    return field.split(b":", 1)[1].strip() if b":" in field else b""


class HeaderBlock:
    """The header block of one message: found once, split into fields on first use.

    ``fields`` keeps each field's exact bytes (folded lines and CRLF
    included), so a rewrite that leaves a field alone leaves its bytes alone.
    """

    __slots__ = ("_fields", "_names", "data", "end")

    def __init__(self, data: bytes) -> None:
        self.data = data
        #: length of the header block (its last CRLF included)
        self.end = header_end(data)
        self._fields: list[bytes] | None = None
        self._names: list[str] | None = None

    @property
    def fields(self) -> list[bytes]:
        if self._fields is None:
            fields: list[bytes] = []
            for line in self.data[: self.end].splitlines(keepends=True):
                if line[:1] in (b" ", b"\t") and fields:
                    fields[-1] += line
                else:
                    fields.append(line)
            self._fields = fields
        return self._fields

    @property
    def names(self) -> list[str]:
        """Lower-cased field names, one per field."""
        if self._names is None:
            self._names = [field_name(f) for f in self.fields]
        return self._names

    @property
    def rest(self) -> bytes:
        """The blank line and the body."""
        return self.data[self.end :]

    def mentions(self, name: str) -> bool:
        """A cheap pre-check: whether ``name`` occurs anywhere in the block (any case)."""
        return name.lower().encode() in self.data[: self.end].lower()

    def value(self, name: str) -> str | None:
        """The unfolded value of the first ``name`` field, or ``None``."""
        wanted = name.lower()
        for field, fname in zip(self.fields, self.names, strict=True):
            if fname == wanted:
                return " ".join(field_value(field).decode("utf-8", "replace").split())
        return None


_LIST_ID = re.compile(r"<([^<>\s]+)>")


def stream_of(head: HeaderBlock, headers: list[str]) -> str:
    """The message's stream (a newsletter, a campaign): the first of ``headers`` it has.

    The one home of the word: the store keeps this value with each message
    (operators select by it) and the scheduler matches suppression scopes
    against it, so both see the same stream. ``List-Id`` (RFC 2919) names its
    list in angle brackets after an optional phrase; that part is the stream.
    Lower-cased (a list identifier is compared without regard to case, and
    people type stream names), at most 200 characters; ``''`` when none.
    """
    for name in headers:
        # A cheap look first: most mail names no stream, and this runs for
        # every message the listener accepts.
        if not head.mentions(name):
            continue
        value = head.value(name)
        if value:
            if name.lower() == "list-id" and (m := _LIST_ID.search(value)):
                value = m.group(1)
            return stream_name(value)
    return ""


def stream_name(text: str) -> str:
    """A stream's name as Sluice keeps and compares it: trimmed, lower-cased, 200 at most.

    Used for what a message names (``stream_of``) and for what people type (a
    suppression's scope, an operator's selection), so ``Newsletter`` typed on
    the page matches ``List-Id: <newsletter>``.
    """
    return text.strip().lower()[:200]


# --------------------------------------------------------- per-provider rewrite


def _from_field(address: str, name: str | None) -> bytes:
    if name and not name.isascii():
        display = Header(name, "utf-8").encode(linesep="\r\n")
        return f"From: {display} <{address}>\r\n".encode("ascii")
    return f"From: {formataddr((name or '', address))}\r\n".encode()


def rewrite(
    data: bytes,
    *,
    send_from: str | None = None,
    send_from_name: str | None = None,
    remove: tuple[str, ...] = (PROVIDER_HEADER,),
    head: HeaderBlock | None = None,
) -> bytes:
    """The bytes to send through one provider (``data`` itself when nothing changes).

    ``head`` is the message's already parsed header block, if the caller has it.
    """
    drop = {n.lower() for n in remove}
    block = head if head is not None else HeaderBlock(data)
    if send_from is None and not (drop and any(block.mentions(n) for n in drop)):
        return data
    fields, names, rest = block.fields, block.names, block.rest
    if send_from is None and not drop.intersection(names):
        return data
    out: list[bytes] = []
    original_from: bytes | None = None
    for field, name in zip(fields, names, strict=True):
        if name in drop:
            continue
        if send_from is not None and name == "from":
            if original_from is None:
                original_from = field.split(b":", 1)[1]
                out.append(_from_field(send_from, send_from_name))
            continue
        out.append(field)
    if send_from is not None:
        if original_from is None:
            out.append(_from_field(send_from, send_from_name))
        elif "reply-to" not in names:
            out.append(b"Reply-To:" + original_from)
    return b"".join(out) + rest


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """The ``headers:`` rules for one provider: fields removed, fields added (its own last).

    ``remove`` holds lower-case glob patterns (``x-internal-*``); ``add``
    holds (name, value) pairs, each replacing any field of that name, so a
    fixed header is never doubled by one the app already set.
    """

    remove: tuple[str, ...] = ()
    add: tuple[tuple[str, str], ...] = ()

    @classmethod
    def merged(cls, *layers: tuple[Sequence[str], Mapping[str, str]] | None) -> HeaderEdit:
        """The edit of several ``(remove, add)`` layers, later ones winning a name."""
        remove: list[str] = []
        add: dict[str, tuple[str, str]] = {}
        for layer in layers:
            if layer is None:
                continue
            remove += [p.lower() for p in layer[0] if p.lower() not in remove]
            add.update({name.lower(): (name, value) for name, value in layer[1].items()})
        return cls(tuple(remove), tuple(add.values()))

    def drops(self, name: str) -> bool:
        """Whether a field called ``name`` (lower case) goes."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.remove) or any(
            name == n.lower() for n, _ in self.add
        )


def edit_headers(data: bytes, edit: HeaderEdit) -> bytes:
    """``data`` with ``edit`` applied to its header block (``data`` itself when none applies).

    Applied on the way out, after the provider's ``send_from`` rewrite and
    before any signature, so what is signed is what is sent; the stored copy
    is never changed (Postfix's ``smtp_header_checks`` act at the same point).
    """
    if not edit.remove and not edit.add:
        return data
    block = HeaderBlock(data)
    kept = [f for f, n in zip(block.fields, block.names, strict=True) if not edit.drops(n)]
    if not edit.add and len(kept) == len(block.fields):
        return data
    added = [f"{name}: {value}\r\n".encode("ascii") for name, value in edit.add]
    if added and kept and not kept[-1].endswith(b"\n"):
        kept[-1] += b"\r\n"  # a last field with no line ending (a message of headers alone)
    return b"".join(kept) + b"".join(added) + block.rest


# ------------------------------------------------------------ subject, wire form

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_SUBJECT = re.compile(rb"^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_BARE = re.compile(rb"(?<!\r)\n|\r(?!\n)")
_LINE_ENDING = re.compile(rb"\r\n|\n|\r")
_SUBJECT_MAX = 200


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
