"""The chunked DATA reader on a real StreamReader: aiosmtpd's results, but lines of any
length kept byte for byte, and memory bounded while a DATA goes on."""

from __future__ import annotations

import asyncio
import socket
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.inbound.data import R_TOO_MUCH_DATA, read_data
from relay.message import bare_line_ending, wire_data


async def _read(
    *chunks: bytes, size_limit: int | None = None, spill_over: int = 256 * 1024
) -> tuple[bytes, str | None, bytes]:
    # aiosmtpd builds its reader with limit=line_length_limit (1001).
    reader = asyncio.StreamReader(limit=1001)
    for chunk in chunks:
        reader.feed_data(chunk)
    data = await read_data(reader, size_limit=size_limit, spill_over=spill_over)
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


async def test_long_lines_are_kept_byte_for_byte() -> None:
    # aiosmtpd says "500 Line too long" past 1001 octets; Postfix accepts them,
    # and PHP's mail() loses the message on a 5xx (issue #13, item 1).
    html = b"<p>" + "é".encode() * 60_000 + b"</p>\r\n"
    body = b"Subject: x\r\n\r\n" + html + b"..dot\r\n" + b"y" * 5000 + b"\r\n"
    wire = body.replace(b"\r\n.", b"\r\n..")
    assert await _read(wire + b".\r\nQUIT\r\n") == (body, None, b"QUIT\r\n")
    # The same through the spill file, with the stuffed dots across its writes.
    assert await _read(wire[:7], wire[7:] + b".\r\nQUIT\r\n", spill_over=1000) == (
        body,
        None,
        b"QUIT\r\n",
    )


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


@given(_LINES, st.sampled_from([8, 9, 10, 13, 64, 256 * 1024]))
async def test_what_delivery_puts_on_the_wire_reads_back_as_the_same_bytes(
    lines: list[bytes], spill_over: int
) -> None:
    """``wire_data`` (our sending side) and ``read_data`` (our receiving side) invert,
    whether the body stays in memory or goes through the spill file in small pieces."""
    body = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join(wire_data(body)) + b"QUIT\r\n"
    # Fed in pieces of 5 bytes, so that every boundary falls everywhere.
    got = await _read(*(wire[i : i + 5] for i in range(0, len(wire), 5)), spill_over=spill_over)
    assert got == (body, None, b"QUIT\r\n")


_ANY_LINES = st.lists(
    st.sampled_from([b"", b".", b"x", b"x" * 7, b"\r", b"\n", b"\r\r", b"\n\r", b"a\rb", b"a\nb"]),
    max_size=12,
)


@given(_ANY_LINES, st.sampled_from([b"", b"\r\n", b"\r", b"\n"]))
async def test_the_line_scan_tells_crlf_only_content_like_a_full_parse(
    lines: list[bytes], tail: bytes
) -> None:
    """The reader's count gives the listener's verdict on bare line endings."""
    content = b"\r\n".join(lines) + tail
    wire = content.replace(b"\r\n.", b"\r\n..")
    wire = (b"." + wire if wire.startswith(b".") else wire) + (
        b"\r\n.\r\n" if not wire.endswith(b"\r\n") else b".\r\n"
    )
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(wire)
    data = await read_data(reader, size_limit=None)
    assert data.error is None
    assert data.crlf_only == (bare_line_ending(data.content) is None)


async def _socket_reader() -> tuple[
    asyncio.StreamReader, asyncio.StreamWriter, asyncio.StreamWriter
]:
    """A StreamReader over a real socket pair, limited as aiosmtpd's is; the client's writer,
    and the reading end's writer (to keep: its transport closes when collected)."""
    ours, theirs = socket.socketpair()
    reader, keep = await asyncio.open_connection(sock=ours, limit=1001)
    _r, client = await asyncio.open_connection(sock=theirs)
    return reader, client, keep


async def test_an_unfinished_data_holds_bounded_memory() -> None:
    """8 MB of DATA with no end line in sight: memory stays near ``spill_over``, not 8 MB.

    (Issue #13, item 5: 30 such connections took an accept worker to 843 MB.)
    """
    reader, client, keep = await _socket_reader()
    line = b"z" * 20_000 + b"\r\n"  # long lines too
    total = 8 * 1024 * 1024 // len(line)
    tracemalloc.start()
    try:
        task = asyncio.create_task(read_data(reader, size_limit=None, spill_over=64 * 1024))
        for _ in range(total):
            client.write(line)
            await client.drain()
        # Everything sent is with the reader or in the socket buffers (a few
        # hundred KB at most): what the reader holds is the traced memory.
        current, _peak = tracemalloc.get_traced_memory()
        assert current < 2 * 1024 * 1024, current
        client.write(b".\r\n")
        data = await asyncio.wait_for(task, 30)
    finally:
        tracemalloc.stop()
        client.close()
        keep.close()
    assert data.error is None
    assert data.content == line * total


async def test_past_the_size_limit_nothing_more_is_kept() -> None:
    reader, client, keep = await _socket_reader()
    task = asyncio.create_task(read_data(reader, size_limit=100_000, spill_over=16 * 1024))
    tracemalloc.start()
    try:
        for _ in range(200):
            client.write(b"q" * 50_000 + b"\r\n")
            await client.drain()
        current, _peak = tracemalloc.get_traced_memory()
        assert current < 1024 * 1024, current
        client.write(b".\r\nQUIT\r\n")
        data = await asyncio.wait_for(task, 30)
    finally:
        tracemalloc.stop()
        client.close()
        keep.close()
    assert data == (b"", R_TOO_MUCH_DATA, False)
    assert await reader.readline() == b"QUIT\r\n"


@pytest.mark.parametrize("spill_over", [8, 100, 1000, 256 * 1024])
@pytest.mark.parametrize("extra", [-1, 0, 1, 50])
async def test_size_limit_is_exact_whether_spilled_or_not(spill_over: int, extra: int) -> None:
    limit = 3000
    body = (b"w" * 98 + b"\r\n") * 30  # 3000 bytes
    body = body[: limit + extra - 2] + b"\r\n" if extra else body
    content, error, rest = await _read(
        body + b".\r\nQUIT\r\n", size_limit=limit, spill_over=spill_over
    )
    assert rest == b"QUIT\r\n"
    if len(body) <= limit:
        assert (content, error) == (body, None)
    else:
        assert (content, error) == (b"", R_TOO_MUCH_DATA)
