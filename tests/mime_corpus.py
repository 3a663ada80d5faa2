"""Messages for the transfer tests: hypothesis strategies and what a mail client decodes.

``decoded(message)`` is the yardstick of "content unchanged": for every MIME
entity, in ``walk()`` order, its content type and the bytes the stdlib
``email`` package decodes from it (``None`` for multiparts and
``message/rfc822``), plus every header field decoded to text (unfolded,
RFC 2047 words decoded). Line endings are CRLF'ed first and a last one is
added if missing, as the wire form does for every message (``message.wire_data``).
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import re

from hypothesis import strategies as st

__all__ = ["decoded", "long_lines", "messages", "wire_lines"]

_LINE_ENDING = re.compile(rb"\r\n|\n|\r")


def _header_text(value: str) -> str:
    """A field's value unfolded and with its encoded words decoded (bytes kept for 8-bit)."""
    parts = email.header.decode_header(value)
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, str):
            out.append(chunk.encode("utf-8", "surrogateescape"))
        elif charset in (None, "us-ascii", "unknown-8bit"):
            out.append(chunk)
        else:
            out.append(chunk.decode(charset).encode("utf-8"))
    # decode_header drops the whitespace between two encoded words, and so do we.
    return " ".join(b"".join(out).decode("utf-8", "surrogateescape").split())


def decoded(message: bytes) -> list[tuple[str, list[tuple[str, str]], bytes | None]]:
    """``[(content type, [(field, decoded value)...], decoded body or None), ...]``."""
    message = _LINE_ENDING.sub(b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"  # SMTP ends every message with a line break (RFC 5321 § 4.1.1.4)
    msg = email.message_from_bytes(message, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        fields = [
            (name.lower(), _header_text(str(value)))
            for name, value in part.raw_items()
            # what the conversion may add or rewrite: the encoding and the declarations
            if name.lower() not in ("content-transfer-encoding", "mime-version", "content-type")
        ]
        body = None if part.is_multipart() else part.get_payload(decode=True)
        out.append((part.get_content_type(), fields, body if isinstance(body, bytes) else None))
    return out


def wire_lines(data: bytes) -> list[bytes]:
    return data.splitlines()


# ------------------------------------------------------------------ strategies

#: printable characters of any script (no controls, no line or paragraph separators)
_PRINTABLE = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
#: NUL-free bytes without line breaks: one line of anything else
_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_TEXT_LINE = st.one_of(
    _LINE.map(lambda b: bytes(c for c in b if c)),
    st.text(max_size=30).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b".", b"..", b".leading dot", b"From here", b"trailing space ", b""]),
)


@st.composite
def long_lines(draw: st.DrawFn) -> bytes:
    """A line of 999-3000 octets (the unwrapped HTML of PHP's mail())."""
    unit = draw(_TEXT_LINE.filter(bool))
    size = draw(st.integers(999, 3000))
    return (unit * (size // len(unit) + 1))[:size].replace(b"\r", b"").replace(b"\n", b"")


_BODY_LINE = st.one_of(_TEXT_LINE, _TEXT_LINE, long_lines())


def _body(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(_BODY_LINE, max_size=6))
    return b"\r\n".join(lines) + draw(st.sampled_from([b"\r\n", b""]))


@st.composite
def _leaf(draw: st.DrawFn, depth: int) -> bytes:
    content = _body(draw)
    ctype = draw(
        st.sampled_from(
            [
                None,
                b"text/plain; charset=utf-8",
                b'text/html; charset="utf-8"',
                b"application/octet-stream",
                b"image/png",
            ]
        )
    )
    cte = draw(st.sampled_from([None, b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable"]))
    head = b""
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    if cte == b"base64":
        # a real base64 body: wrapped, or one long line as some generators write
        raw = base64.b64encode(content)
        if draw(st.booleans()):
            raw = b"\r\n".join(raw[i : i + 76] for i in range(0, len(raw), 76))
        content = raw + b"\r\n"
    return head + b"\r\n" + content


@st.composite
def _multipart(draw: st.DrawFn, depth: int) -> bytes:
    boundary = b"=_sluice_" + draw(st.sampled_from([b"a", b"b1", b"c.2"])) + str(depth).encode()
    children = draw(st.lists(_entity(depth + 1), min_size=1, max_size=3))
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related"]))
    head = b"Content-Type: multipart/" + subtype + b'; boundary="' + boundary + b'"\r\n'
    body = draw(st.sampled_from([b"", b"This is a multi-part message.\r\n"]))
    for child in children:
        body += b"--" + boundary + b"\r\n" + child + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return head + b"\r\n" + body


@st.composite
def _rfc822(draw: st.DrawFn, depth: int) -> bytes:
    inner = draw(_entity(depth + 1))
    return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + inner


def _entity(depth: int) -> st.SearchStrategy[bytes]:
    if depth >= 2:
        return _leaf(depth)
    return st.one_of(_leaf(depth), _leaf(depth), _multipart(depth), _rfc822(depth))


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A whole message: a few top-level fields (some 8-bit, some long), then an entity."""
    subject = draw(
        st.one_of(
            st.text(_PRINTABLE, max_size=40)
            .map(lambda t: " ".join(t.split()).replace("=?", "= ?"))
            .map(lambda t: t.encode("utf-8")),
            st.just(b"plain subject"),
        )
    )
    head = b"From: App <app@example.org>\r\nTo: user@example.net\r\nSubject: " + subject + b"\r\n"
    if draw(st.booleans()):
        many = b", ".join(b"user%d@example.net" % i for i in range(80))
        head += b"X-Recipients: " + many + b"\r\n"
    mime = b"MIME-Version: 1.0\r\n" if draw(st.booleans()) else b""
    entity = draw(_entity(0))
    return head + mime + entity
