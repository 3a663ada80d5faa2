"""Per-provider rewrites of the bytes sent: ``send_from`` and the ``X-Sluice-Provider`` header.

These apply to what one attempt sends, never to the stored message, so a
config change (or a different provider on the next attempt) starts from the
original bytes again. Only the header block is touched; each field keeps its
exact bytes unless it is the one being rewritten.

``send_from`` (with ``send_from_name``): providers such as SES or Gmail only
accept mail from a verified address. The envelope sender becomes
``send_from``, the From header becomes ``send_from_name <send_from>``, and the
original From is kept as Reply-To when the message has none, so replies still
reach the original author.
"""

from __future__ import annotations

import re
from email.header import Header
from email.utils import formataddr

__all__ = ["PROVIDER_HEADER", "header_end", "header_value", "rewrite"]

PROVIDER_HEADER = "X-Sluice-Provider"

_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def header_end(data: bytes) -> int:
    """Length of the header block, its last CRLF included: what ``header_value`` reads.

    Without a blank line the whole message counts as header; a message that
    starts with one has none.
    """
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return end + 2
    return 0 if data.startswith(b"\r\n") else len(data)


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded lines and CRLF) and the rest (blank line + body)."""
    end = header_end(data)
    head, rest = data[:end], data[end:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, rest


def _name(field: bytes) -> str:
    match = _FIELD_NAME.match(field)
    return match.group(1).decode("ascii").lower() if match else ""


def _value(field: bytes) -> bytes:
    return field.split(b":", 1)[1].strip() if b":" in field else b""


def header_value(data: bytes, name: str) -> str | None:
    """The unfolded value of the first ``name`` header, or ``None``."""
    wanted = name.lower()
    for field in _split(data)[0]:
        if _name(field) == wanted:
            return " ".join(_value(field).decode("utf-8", "replace").split())
    return None


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
) -> bytes:
    """The bytes to send through one provider (``data`` itself when nothing changes)."""
    drop = {n.lower() for n in remove}
    fields, rest = _split(data)
    names = [_name(f) for f in fields]
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
