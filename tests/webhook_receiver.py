"""A real HTTP receiver for webhook tests: asyncio on 127.0.0.1, a scripted answer.

It speaks just enough HTTP/1.1 (request line, headers, a Content-Length
body, one request per connection) to take Sluice's POSTs::

    rx = await WebhookReceiver().start()
    rx.status = 500          # answer every POST with 500 ...
    await rx.stop()          # ... or be down (connection refused) ...
    await rx.start()         # ... and come back on the same port

Every request is kept in ``requests`` (with the status it was answered);
``await rx.wait_for(lambda reqs: ...)`` waits with a deadline.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hit", "WebhookReceiver"]


@dataclass(frozen=True)
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    #: the status it was answered with
    status: int

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    port: int = 0
    status: int = 200
    requests: list[Hit] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def accepted(self) -> list[Hit]:
        return [h for h in self.requests if 200 <= h.status < 300]

    async def wait_for(self, check: Callable[[list[Hit]], bool], within: float = 20.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: check(self.requests))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            _method, path, _version = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            body = await asyncio.wait_for(
                reader.readexactly(int(headers.get("content-length", "0"))), 10
            )
            status = self.status
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            async with self._changed:
                self.requests.append(Hit(path, headers, body, status))
                self._changed.notify_all()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
