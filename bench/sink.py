"""A fast counting SMTP sink, run as its own process (``python -m bench.sink``).

A plain ``asyncio.Protocol`` (no aiosmtpd: the sink must never be the slow part)
that answers every command at once, accepts every message, and records for each
one the bench token found in its ``X-Bench:`` header together with the arrival
time. The parent drives it over stdin, one command a line, one answer a line:

``count``        -> ``count N`` (messages received so far)
``start``        -> ``ok`` (leave *held* mode: greet the connections waiting)
``dump PATH``    -> ``ok`` (write ``{"tokens": {token: [t, ...]}, ...}`` as JSON)
``last TOKEN``   -> ``last LENGTH SHA256`` of the last message, from its ``X-Bench: TOKEN``
                    line to the end (what Sluice added before it left out), dot-stuffed as
                    received (``python -m bench memory`` compares it with what it sent)
``quit``         -> exits

Started with ``--held``, it accepts TCP connections but withholds the greeting
until ``start``: to Sluice that is an upstream that is down (its sessions wait
in connect), and one that comes back without losing a single claim.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
import time
from pathlib import Path

__all__ = ["Sink", "main"]

_TOKEN = re.compile(rb"\r\nX-Bench: (\S+)")
#: untagged messages (Postfix's smtp-source) are told apart by their Message-Id
_MESSAGE_ID = re.compile(rb"\r\nMessage-Id: (\S+)", re.IGNORECASE)
_MAX_LINE = 64 * 1024


class Sink:
    """Shared state of all connections: counts, tokens and held transports."""

    def __init__(self, *, held: bool) -> None:
        self.held = held
        self.count = 0
        self.untagged = 0
        #: connections accepted (the relays' delivery connections; the generator's in tests)
        self.connections = 0
        self.tokens: dict[str, list[float]] = {}
        #: how often each untagged Message-Id arrived (smtp-source numbers its messages)
        self.untagged_ids: dict[bytes, int] = {}
        self.waiting: list[SinkProtocol] = []
        #: the last message as received (no copy: the bytes ``record`` was given)
        self.last = b""

    def record(self, data: bytes) -> None:
        self.count += 1
        self.last = data
        # The buffer handed over starts with the CRLF that ended DATA, so the
        # first header line matches the pattern too.
        match = _TOKEN.search(data, 0, 16384)
        if match is None:
            self.untagged += 1
            found = _MESSAGE_ID.search(data, 0, 16384)
            if found is not None:
                key = found.group(1)
                self.untagged_ids[key] = self.untagged_ids.get(key, 0) + 1
            return
        self.tokens.setdefault(match.group(1).decode("ascii", "replace"), []).append(time.time())

    def release(self) -> None:
        self.held = False
        waiting, self.waiting = self.waiting, []
        for proto in waiting:
            proto.greet()


class SinkProtocol(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = bytearray()
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self.transport = transport  # type: ignore[assignment]
        self.sink.connections += 1
        if self.sink.held:
            self.sink.waiting.append(self)
        else:
            self.greet()

    def greet(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"220 sink.bench ESMTP counting sink\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.sink.held:
            return  # a client that talks before the greeting is ignored until start
        self.buf += data
        out: list[bytes] = []
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.sink.record(bytes(self.buf[:end]))
                del self.buf[: end + 5]
                self.in_data = False
                out.append(b"250 2.0.0 Ok: counted\r\n")
                continue
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                if len(self.buf) > _MAX_LINE:
                    out.append(b"500 5.5.6 line too long\r\n")
                    self.buf.clear()
                break
            line = bytes(self.buf[:eol])
            del self.buf[: eol + 2]
            out.append(self._command(line))
            if line[:4].upper() == b"QUIT":
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if out[-1].startswith(b"221") and self.transport is not None:
                self.transport.close()

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 209715200\r\n"
        if verb == b"DATA":
            self.in_data = True
            # A "." right after DATA is an empty message; the search above finds
            # "\r\n.\r\n", so seed the buffer with the CRLF that ended DATA.
            self.buf[0:0] = b"\r\n"
            return b"354 go ahead\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n"
        return b"250 2.0.0 Ok\r\n"


async def _serve(port: int, held: bool) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink(held=held)
    server = await loop.create_server(lambda: SinkProtocol(sink), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"listening {bound}", flush=True)
    async with server:
        while line := (await reader.readline()).decode().strip():
            cmd, _, arg = line.partition(" ")
            if cmd == "count":
                print(f"count {sink.count}", flush=True)
            elif cmd == "start":
                sink.release()
                print("ok", flush=True)
            elif cmd == "dump":
                report = {
                    "count": sink.count,
                    "untagged": sink.untagged,
                    "connections": sink.connections,
                    "tokens": sink.tokens,
                    "untagged_duplicates": sum(n - 1 for n in sink.untagged_ids.values() if n > 1),
                }
                await asyncio.to_thread(Path(arg).write_text, json.dumps(report))
                print("ok", flush=True)
            elif cmd == "last":
                start = sink.last.find(b"X-Bench: " + arg.encode())
                body = memoryview(sink.last)[max(start, 0) :]
                print(f"last {len(body)} {hashlib.sha256(body).hexdigest()}", flush=True)
            elif cmd == "quit":
                break
            else:
                print(f"error unknown command {cmd!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="counting SMTP sink (loopback only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--held", action="store_true", help="withhold the greeting until start")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args.port, args.held))
    except ImportError:
        asyncio.run(_serve(args.port, args.held))


if __name__ == "__main__":
    main()
