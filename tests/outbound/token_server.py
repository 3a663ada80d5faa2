"""A tiny OAuth2 token endpoint on 127.0.0.1:0 (plain asyncio HTTP/1.1, one request per connection).

Each POST is recorded (its form fields) and answered from ``responses`` in
order (the last one repeats): ``(status, json_body)``. ``issue(token, ttl)``
is a shorthand for a successful answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["TokenServer"]


@dataclass
class TokenServer:
    responses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @staticmethod
    def issue(token: str, ttl: int) -> tuple[int, dict[str, Any]]:
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": ttl}

    async def start(self) -> TokenServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            self.requests.append(dict(parse_qsl(body.decode())))
            index = min(len(self.requests), len(self.responses)) - 1
            status, payload = self.responses[index] if self.responses else (500, {})
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        finally:
            writer.close()
