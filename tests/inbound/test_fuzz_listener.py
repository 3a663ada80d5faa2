"""Property test against a live listener: whatever a client sends, Sluice answers with a
valid SMTP reply, stays up, and stores exactly one message per ``250 ... queued as``.

The second property feeds arbitrary bytes (not only UTF-8) as the argument of
every command and asserts no internal error and no traceback in the log
(issue #23, point 5: an undecodable byte in EHLO cost a session every message).

Sluice runs in a thread with its own event loop, so Hypothesis can drive it with
plain blocking sockets (Hypothesis does not run async tests itself).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config import load
from relay.daemon import Daemon
from tests.conftest import fast_config, provider_for, write_config
from tests.upstream import TestUpstream

REPLY = re.compile(rb"^[2-5]\d\d[ -]")


@dataclass
class Live:
    port: int
    spool: Path
    queued: int = 0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    ready = threading.Event()
    box: dict[str, object] = {}

    async def main() -> None:
        up = await TestUpstream().start()
        cfg_path = write_config(
            tmp / "sluice.yaml",
            fast_config(tmp, [provider_for(up)], smtp={"max_message_size": "64KiB"}),
        )
        daemon = Daemon(load(cfg_path), config_path=cfg_path)
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        async with daemon.running():
            assert daemon.listener is not None
            box["port"] = daemon.listener.addresses[0].port
            box["spool"] = daemon.config.spool.path
            ready.set()
            await stop.wait()
        await up.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(20), "sluice did not start"
    live_state = Live(port=int(str(box["port"])), spool=Path(str(box["spool"])))
    yield live_state
    # The strategies must reach the interesting path, not only errors.
    assert live_state.queued > 0, "no example got as far as a queued message"
    loop, stop = cast(tuple[asyncio.AbstractEventLoop, asyncio.Event], box["stop"])
    loop.call_soon_threadsafe(stop.set)
    thread.join(20)


words = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)
address = st.one_of(
    st.builds(
        lambda a, b: f"{a}@{b}",
        st.from_regex(r"[a-z0-9.]{1,10}", fullmatch=True),
        st.from_regex(r"[a-z]{1,8}\.[a-z]{2,3}", fullmatch=True),
    ),
    words,
    st.just(""),
)
command = st.one_of(
    st.builds(lambda w: f"EHLO {w}", words),
    st.builds(lambda w: f"HELO {w}", words),
    st.builds(lambda a: f"MAIL FROM:<{a}>", address),
    st.builds(lambda a, p: f"MAIL FROM:<{a}> {p}", address, words),
    st.builds(lambda a: f"RCPT TO:<{a}>", address),
    st.sampled_from(["DATA", "RSET", "NOOP", "VRFY x", "HELP", "STARTTLS", "AUTH PLAIN"]),
    words,
).map(lambda c: c.encode("utf-8") + b"\r\n")
body = (
    st.one_of(
        st.binary(max_size=300),
        st.builds(lambda t: t.encode() + b"\r\n", words),
        st.just(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x.y>\r\n"),
    )
    .filter(
        # The payload must not end the message early, or the replies that follow
        # would answer our payload's leftovers instead of our commands.
        lambda b: b"\r\n.\r\n" not in b"\r\n" + b + b"\r\n"
    )
    .map(lambda b: b + b"\r\n.\r\n")
)


def read_reply(sock: socket.socket, buf: bytearray) -> bytes:
    """One full (possibly multi-line) reply."""
    lines: list[bytes] = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(lines) or b"<closed>"
            buf.extend(chunk)
        line, _, rest = bytes(buf).partition(b"\r\n")
        buf[:] = rest
        lines.append(line + b"\r\n")
        if line[3:4] != b"-":
            return b"".join(lines)


valid_address = st.builds(
    lambda a, b: f"{a}@{b}",
    st.from_regex(r"[a-z0-9.]{1,10}", fullmatch=True),
    st.from_regex(r"[a-z]{1,8}\.[a-z]{2,3}", fullmatch=True),
)
# A well-formed transaction, so that examples reach DATA and the spool.
transaction = st.builds(
    lambda s, r, d: [
        (b"EHLO fuzz\r\n", b""),
        (f"MAIL FROM:<{s}>\r\n".encode(), b""),
        (f"RCPT TO:<{r}>\r\n".encode(), b""),
        (b"DATA\r\n", d),
    ],
    valid_address,
    valid_address,
    body,
)
steps = st.lists(
    st.one_of(st.tuples(command, body).map(lambda t: [t]), transaction), max_size=6
).map(lambda groups: [step for group in groups for step in group])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(session=steps)
def test_any_input_gets_a_valid_reply_and_one_message_per_250(
    live: Live, session: list[tuple[bytes, bytes]]
) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        buf = bytearray()
        assert read_reply(sock, buf).startswith(b"220")
        for line, data in session:
            sock.sendall(line)
            reply = read_reply(sock, buf)
            if reply == b"<closed>":
                break
            assert REPLY.match(reply), reply
            if reply.startswith(b"354"):
                sock.sendall(data)
                reply = read_reply(sock, buf)
                assert REPLY.match(reply), reply
                if b"queued as" in reply:
                    live.queued += 1
            assert not reply.startswith(b"500 Error: ("), reply  # aiosmtpd's internal-error text
            assert reply.isascii(), reply  # RFC 5321 section 4.2 (issue #13, item 3)
            assert not reply.startswith(b"451"), reply  # no internal error on any input
            if reply.startswith(b"221") or reply.startswith(b"421"):
                break
    # Still alive, and exactly one stored message per "250 ... queued as".
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        assert read_reply(sock, bytearray()).startswith(b"220")
    with sqlite3.connect(f"file:{live.spool}?mode=ro", uri=True, timeout=10) as db:
        (stored,) = db.execute("SELECT count(*) FROM messages").fetchone()
    assert stored == live.queued


# Any bytes a client can put on one command line: everything but CR and LF,
# with undecodable high bytes made likely (they are what broke EHLO).
hostile = st.one_of(
    st.binary(max_size=60),
    st.lists(st.integers(0x80, 0xFF), max_size=8).map(bytes),
    st.lists(
        st.sampled_from([b"h", b"\xff", b"\xfe", b"\xc3", b"\x00", b"\\", b"<", b">"]), max_size=20
    ).map(b"".join),
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
verb = st.sampled_from(
    [b"HELO", b"EHLO", b"MAIL FROM:", b"RCPT TO:", b"NOOP", b"VRFY", b"RSET", b"HELP", b"XYZZY"]
)
hostile_command = st.one_of(
    st.builds(lambda v, a: [(v + b" " + a + b"\r\n", b"")], verb, hostile),
    st.builds(lambda v, a: [(v + b"<" + a + b">\r\n", b"")], verb, hostile),
    st.builds(lambda a: [(a + b"\r\n", b"")], hostile),  # an unknown (or empty) verb
    st.builds(  # a valid path with hostile parameters (SIZE=, BODY=, SMTPUTF8...)
        lambda v, addr, a: [(v + f"<{addr}> ".encode() + a + b"\r\n", b"")],
        st.sampled_from([b"MAIL FROM:", b"RCPT TO:"]),
        valid_address,
        hostile,
    ),
)
# A transaction whose greeting name and header are hostile, so that the bytes
# reach the Received line, the spool and the log of an accepted message.
hostile_transaction = st.builds(
    lambda hello, name, s, r, header: [
        (hello + b" " + name + b"\r\n", b""),
        (f"MAIL FROM:<{s}>\r\n".encode(), b""),
        (f"RCPT TO:<{r}>\r\n".encode(), b""),
        (b"DATA\r\n", b"X-Fuzz: " + header + b"\r\nSubject: " + header + b"\r\n\r\nhi\r\n.\r\n"),
    ],
    st.sampled_from([b"EHLO", b"HELO"]),
    hostile.filter(lambda b: b.strip() != b""),
    valid_address,
    valid_address,
    hostile,
)
hostile_steps = st.lists(st.one_of(hostile_command, hostile_transaction), max_size=6).map(
    lambda groups: [step for group in groups for step in group]
)


def well_formed(reply: bytes) -> bool:
    """Every line ``NNN-text`` or, last, ``NNN text``, with one code throughout (RFC 5321 § 4.2)."""
    lines = reply.split(b"\r\n")[:-1]
    code = lines[0][:3]
    return all(
        REPLY.match(line) and line[:3] == code and (line[3:4] == b" ") == (i == len(lines) - 1)
        for i, line in enumerate(lines)
    )


@settings(
    max_examples=150,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(session=hostile_steps)
def test_arbitrary_bytes_in_any_command_get_an_answer_and_no_traceback(
    live: Live, session: list[tuple[bytes, bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        buf = bytearray()
        assert read_reply(sock, buf).startswith(b"220")
        ended = False
        for line, data in session:
            sock.sendall(line)
            replies = [read_reply(sock, buf)]
            if replies[0].startswith(b"354"):
                # A hostile line may happen to be DATA: end that message too.
                sock.sendall(data or b".\r\n")
                replies.append(read_reply(sock, buf))
            ended = replies[-1][:3] in (b"221", b"421")  # a hostile line may happen to be QUIT
            for reply in replies:
                assert reply != b"<closed>", line
                assert well_formed(reply), (line, reply)
                assert reply.isascii(), (line, reply)
                assert not (reply.startswith(b"451") and b"internal" in reply.lower()), (
                    line,
                    reply,
                )
                assert not reply.startswith(b"500 Error: ("), (line, reply)
                if b"queued as" in reply:
                    live.queued += 1
            if ended:
                break
        if not ended:
            sock.sendall(b"QUIT\r\n")
            assert read_reply(sock, buf).startswith(b"221")
    # The log records the thread's records as they are emitted; the session's
    # last ones are in once QUIT is answered.
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text
