"""A built-in asyncio SMTP load generator: sessions sending their share of the messages.

By default each session opens one connection, says EHLO once, then sends its
share of the messages over it. With ``per_message`` (``--connection-per-message``)
it opens a new connection for every message, says EHLO, sends it and QUITs, as
most applications' mailers do (PHP, Django's ``send_mail``, cron, Rails).
Per message it pipelines ``MAIL``/``RCPT``/``DATA`` (both Sluice and
Postfix advertise PIPELINING), sends the body and waits for the final reply.
With ``auth`` (``--client tls-auth``) every connection does STARTTLS and AUTH
PLAIN after EHLO, as a submission client (msmtp, PHPMailer) does.
Every message carries a unique token in an ``X-Bench:`` header so the sink can
tell lost and duplicated messages apart, and the time its transaction started,
kept here, gives the end-to-end latency.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SMTP_SOURCE", "ClientAuth", "LoadResult", "make_body", "run_load", "run_smtp_source"]

#: Postfix's own load generator (Debian: package postfix)
SMTP_SOURCE = "/usr/sbin/smtp-source"

_LINE = b"The quick brown fox jumps over the lazy dog while the relay keeps count. 0123\r\n"


def make_body(token: str, size: int) -> bytes:
    """A message of about ``size`` bytes (headers included), CRLF line endings."""
    head = (
        "From: Bench <bench@example.com>\r\n"
        "To: Sink <sink@example.net>\r\n"
        f"Subject: bench {token}\r\n"
        f"Message-ID: <{token}@bench.example>\r\n"
        f"X-Bench: {token}\r\n\r\n"
    ).encode()
    lines = max(1, (size - len(head)) // len(_LINE))
    return head + _LINE * lines


@dataclass
class LoadResult:
    started: float = 0.0
    finished: float = 0.0
    #: token -> (transaction start, 250 received), wall-clock seconds
    sent: dict[str, tuple[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def accept_latencies(self) -> list[float]:
        return [done - start for start, done in self.sent.values()]


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read one (possibly multi-line) SMTP reply."""
    text = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed by server")
        text.append(line.decode("utf-8", "replace").rstrip())
        if line[3:4] != b"-":
            return int(line[:3]), "\n".join(text)


@dataclass(frozen=True)
class ClientAuth:
    """STARTTLS (with this context) and AUTH PLAIN after EHLO, as a submission client does."""

    tls: ssl.SSLContext
    user: str
    password: str


async def _open(
    host: str, port: int, auth: ClientAuth | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect, read the greeting and say EHLO (then STARTTLS, EHLO and AUTH, with ``auth``)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        code, text = await _reply(reader)
        if code != 220:
            raise ConnectionError(f"greeting: {text}")
        writer.write(b"EHLO loadgen.bench\r\n")
        code, text = await _reply(reader)
        if code != 250:
            raise ConnectionError(f"EHLO: {text}")
        if auth is not None:
            writer.write(b"STARTTLS\r\n")
            code, text = await _reply(reader)
            if code != 220:
                raise ConnectionError(f"STARTTLS: {text}")
            await writer.start_tls(auth.tls, server_hostname=host)
            plain = base64.b64encode(f"\0{auth.user}\0{auth.password}".encode()).decode()
            replies = []
            for command in ("EHLO loadgen.bench", f"AUTH PLAIN {plain}"):
                writer.write(command.encode() + b"\r\n")
                replies.append(await _reply(reader))
            if [c for c, _ in replies] != [250, 235]:
                raise ConnectionError(f"EHLO/AUTH after STARTTLS: {replies}")
    except BaseException:
        await _close(writer)
        raise
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


async def _quit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"QUIT\r\n")
    await _reply(reader)


async def _transaction(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    token: str,
    size: int,
    result: LoadResult,
    start: float,
) -> None:
    """One message; ``start`` is when its transaction (or its connection) began."""
    body = make_body(token, size)
    writer.write(b"MAIL FROM:<bench@example.com>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n")
    replies = [await _reply(reader) for _ in range(3)]
    if [c for c, _ in replies] != [250, 250, 354]:
        result.errors.append(f"{token}: {replies}")
        writer.write(b"RSET\r\n")
        await _reply(reader)
        return
    writer.write(body + b".\r\n")
    code, text = await _reply(reader)
    if code == 250:
        result.sent[token] = (start, time.time())
    else:
        result.errors.append(f"{token}: {text}")


async def _session(
    host: str,
    port: int,
    tokens: list[str],
    size: int,
    result: LoadResult,
    deadline: float,
    auth: ClientAuth | None = None,
) -> None:
    reader, writer = await _open(host, port, auth)
    try:
        for token in tokens:
            if time.monotonic() > deadline:
                result.errors.append("deadline reached before every message was sent")
                return
            await _transaction(reader, writer, token, size, result, time.time())
        await _quit(reader, writer)
    finally:
        await _close(writer)


async def _session_per_message(
    host: str,
    port: int,
    tokens: list[str],
    size: int,
    result: LoadResult,
    deadline: float,
    auth: ClientAuth | None = None,
) -> None:
    """A new connection per message: connect, EHLO, one transaction, QUIT, close.

    The latencies count from the connect: that is what the application waits for.
    """
    for token in tokens:
        if time.monotonic() > deadline:
            result.errors.append("deadline reached before every message was sent")
            return
        start = time.time()
        reader, writer = await _open(host, port, auth)
        try:
            await _transaction(reader, writer, token, size, result, start)
            await _quit(reader, writer)
        finally:
            await _close(writer)


async def run_load(
    host: str,
    port: int,
    *,
    messages: int,
    size: int,
    sessions: int,
    time_limit: float = 600.0,
    run_id: str | None = None,
    result: LoadResult | None = None,
    per_message: bool = False,
    auth: ClientAuth | None = None,
) -> LoadResult:
    """Send ``messages`` messages of ``size`` bytes from ``sessions`` concurrent sessions.

    ``per_message``: a new connection for every message instead of one per session.
    ``auth``: each connection does STARTTLS and AUTH PLAIN before its first message.

    Pass ``result`` to watch progress while it runs (``len(result.sent)``).
    """
    run = run_id or secrets.token_hex(4)
    tokens = [f"{run}-{i}" for i in range(messages)]
    shares = [tokens[i::sessions] for i in range(sessions)]
    result = result or LoadResult()
    result.started = time.time()
    deadline = time.monotonic() + time_limit
    session = _session_per_message if per_message else _session
    outcomes = await asyncio.gather(
        *(session(host, port, share, size, result, deadline, auth) for share in shares if share),
        return_exceptions=True,
    )
    result.finished = time.time()
    result.errors.extend(f"session failed: {o!r}" for o in outcomes if isinstance(o, BaseException))
    return result


async def run_smtp_source(
    host: str,
    port: int,
    *,
    messages: int,
    size: int,
    sessions: int,
    time_limit: float = 600.0,
    per_message: bool = True,
    program: str | Path = SMTP_SOURCE,
) -> tuple[int, LoadResult]:
    """Drive ``host:port`` with Postfix's ``smtp-source``; (messages sent, timing).

    ``smtp-source`` opens a new connection per message unless ``-d``; it sends
    HELO, no pipelining, ``size`` bytes of payload after its own headers. It
    cannot tag messages, so the caller counts what the sink received against
    the number sent (all of them when it exits 0: without ``-A`` it stops at
    the first reply that is not positive; then, the last value of its ``-c``
    counter). The returned ``LoadResult`` holds
    only the start and end times and any error, no per-message latencies.
    """
    args = [
        str(program),
        "-c",  # a counter of completed DATA commands, to count what it sent if it fails
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(size),
        "-f",
        "bench@example.com",
        "-t",
        "sink@example.net",
        "-M",
        "loadgen.bench",
    ]
    if not per_message:
        args.append("-d")
    result = LoadResult(started=time.time())
    proc = await asyncio.create_subprocess_exec(
        *args,
        f"{host}:{port}",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        result.errors.append("smtp-source: time limit reached")
        result.finished = time.time()
        return 0, result
    result.finished = time.time()
    if proc.returncode != 0:
        # It stops at the first failure (a refused connect, a 4xx): what it had
        # sent until then is the last value of its counter.
        counts = [int(x) for x in out.split() if x.isdigit()]
        sent = counts[-1] if counts else 0
        result.errors.append(
            f"smtp-source exited {proc.returncode} after {sent}: {err.decode()[-500:].strip()}"
        )
        return sent, result
    return messages, result
