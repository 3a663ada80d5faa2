"""The chunked DATA reader gives aiosmtpd's results on a real StreamReader."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.inbound.data import R_LINE_TOO_LONG, R_TOO_MUCH_DATA, read_data
from relay.message import bare_line_ending, wire_data


async def _read(
    *chunks: bytes, size_limit: int | None = None, line_limit: int = 1001
) -> tuple[bytes, str | None, bytes]:
    # aiosmtpd builds its reader with limit=line_length_limit (1001).
    reader = asyncio.StreamReader(limit=1001)
    for chunk in chunks:
        reader.feed_data(chunk)
    data = await read_data(reader, size_limit=size_limit, line_limit=line_limit)
    reader.feed_eof()
    return data.content, data.error, await reader.read()


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),  # empty body: the end line comes first
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"a.\r\nb\r\n\r\n.\r\n", b"a.\r\nb\r\n\r\n"),  # "." ending a line is content
        (b"..\r\n..x\r\n.y\r\n.\r\n", b".\r\n.x\r\ny\r\n"),  # dot-stuffing undone
        (b"a\rb\nc\r\n.\r\n", b"a\rb\nc\r\n"),  # bare CR/LF kept for the listener to judge
    ],
)
async def test_content(wire: bytes, content: bytes) -> None:
    assert await _read(wire + b"QUIT\r\n") == (content, None, b"QUIT\r\n")


async def test_end_line_split_across_reads_and_pipelined_rest_kept() -> None:
    assert await _read(b"a\r\n", b".", b"\r", b"\nRSET\r\n") == (b"a\r\n", None, b"RSET\r\n")


async def test_large_body_in_chunks_is_exact() -> None:
    body = b"".join(b"line %d of a long message\r\n" % i for i in range(20_000))
    assert await _read(body[:70_000], body[70_000:], b".\r\nNOOP\r\n") == (body, None, b"NOOP\r\n")


async def test_line_length_limit_matches_aiosmtpd() -> None:
    ok = b"x" * 1001 + b"\r\n"
    assert (await _read(ok + b".\r\n"))[:2] == (ok, None)
    assert await _read(b"x" * 1002 + b"\r\n.\r\nQUIT\r\n") == (b"", R_LINE_TOO_LONG, b"QUIT\r\n")


async def test_size_limit_reads_to_the_end_then_refuses() -> None:
    body = b"y" * 998 + b"\r\n"
    assert (await _read(body + b".\r\n", size_limit=1000))[:2] == (body, None)
    big = body * 200
    assert await _read(big + b".\r\nQUIT\r\n", size_limit=1000) == (
        b"",
        R_TOO_MUCH_DATA,
        b"QUIT\r\n",
    )


_LINES = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"a b", b"\xc3\xa9", b"." * 5]),
    max_size=12,
)


@given(_LINES)
async def test_what_delivery_puts_on_the_wire_reads_back_as_the_same_bytes(
    lines: list[bytes],
) -> None:
    """``wire_data`` (our sending side) and ``read_data`` (our receiving side) invert."""
    body = b"".join(line + b"\r\n" for line in lines)
    assert await _read(b"".join(wire_data(body)) + b"QUIT\r\n") == (body, None, b"QUIT\r\n")


_ANY_LINES = st.lists(
    st.sampled_from([b"", b".", b"x", b"x" * 7, b"\r", b"\n", b"\r\r", b"\n\r", b"a\rb", b"a\nb"]),
    max_size=12,
)


@given(_ANY_LINES, st.sampled_from([b"", b"\r\n", b"\r", b"\n"]))
async def test_the_line_scan_tells_crlf_only_content_and_line_length_like_a_full_parse(
    lines: list[bytes], tail: bytes
) -> None:
    """One scan gives the listener's verdict on bare line endings and aiosmtpd's longest line."""
    content = b"\r\n".join(lines) + tail
    wire = content.replace(b"\r\n.", b"\r\n..")
    wire = (b"." + wire if wire.startswith(b".") else wire) + (
        b"\r\n.\r\n" if not wire.endswith(b"\r\n") else b".\r\n"
    )
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(wire)
    longest = max(map(len, wire[:-3].split(b"\r\n")))
    data = await read_data(reader, size_limit=None, line_limit=5)
    assert data.error == (R_LINE_TOO_LONG if longest > 5 else None)
    if data.error is None:
        assert data.crlf_only == (bare_line_ending(data.content) is None)
