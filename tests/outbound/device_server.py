"""A local OAuth 2.0 authorization server for the device grant (RFC 8628), on 127.0.0.1:0.

``POST /devicecode`` answers a device code, a user code and the verification
URL. ``POST /token`` answers the device-code grant from ``polls`` in order
(each an RFC 8628 § 3.5 error such as ``authorization_pending``, or ``"ok"``
to issue tokens; the last one repeats), and the refresh grant with a new
access token unless the refresh token is in ``revoked`` (then
``invalid_grant``, as Microsoft answers for a revoked token). Every request's
form is recorded. Plain asyncio HTTP/1.1, one request per connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["DeviceServer"]


@dataclass
class DeviceServer:
    polls: list[str] = field(default_factory=lambda: ["ok"])
    #: seconds the client is told to wait between polls (RFC 8628 § 3.2 ``interval``)
    interval: float = 0
    expires_in: int = 600
    user_code: str = "WDJB-MJHT"
    revoked: set[str] = field(default_factory=set)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    port: int = 0
    _issued: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: asyncio.Server | None = None

    @property
    def device_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/devicecode"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def forms(self, path: str, grant_type: str | None = None) -> list[dict[str, str]]:
        return [
            f
            for p, f in self.requests
            if p == path and (grant_type is None or f.get("grant_type") == grant_type)
        ]

    async def start(self) -> DeviceServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def _answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/devicecode":
            return 200, {
                "device_code": "dev-code-1",
                "user_code": self.user_code,
                "verification_uri": "https://login.example.test/device",
                "expires_in": self.expires_in,
                "interval": self.interval,
            }
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            n = len(self.forms("/token", grant))
            answer = self.polls[min(n, len(self.polls)) - 1]
            if answer != "ok":
                return 400, {"error": answer, "error_description": f"{answer} (test)"}
            return 200, self._tokens()
        if grant == "refresh_token":
            if form.get("refresh_token") in self.revoked:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "AADSTS50173: the grant was revoked",
                }
            return 200, self._tokens()
        return 400, {"error": "unsupported_grant_type"}

    def _tokens(self) -> dict[str, Any]:
        n = next(self._issued)
        return {
            "access_token": f"access-{n}",
            "refresh_token": f"refresh-{n}",
            "token_type": "Bearer",
            "expires_in": 3600,
        }

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            form = dict(parse_qsl(body.decode()))
            self.requests.append((path, form))
            status, payload = self._answer(path, form)
            data = json.dumps(payload).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        finally:
            writer.close()
