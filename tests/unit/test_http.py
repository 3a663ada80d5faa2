"""The one set of HTTP client settings (relay.http) against a real HTTP server on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from relay import __version__
from relay.http import USER_AGENT, client


@dataclass
class Server:
    """Answers ``/ok`` with 200, ``/moved`` with a 302 elsewhere, and never answers ``/hang``."""

    port: int = 0
    #: the headers of every request, lower-case names
    seen: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        path = request[0].split()[1]
        self.paths.append(path)
        self.seen.append(
            {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in request[1:] if h)}
        )
        if path == "/hang":
            await reader.read()  # until the client gives up and closes
        elif path == "/moved":
            writer.write(
                b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    srv = await asyncio.start_server(s.serve, "127.0.0.1", 0)
    s.port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield s


async def test_it_names_sluice_in_the_user_agent(server: Server) -> None:
    async with client() as http:
        resp = await http.get(f"http://127.0.0.1:{server.port}/ok")
    assert resp.status_code == 200
    assert server.seen[0]["user-agent"] == USER_AGENT == f"Sluice/{__version__}"


async def test_a_caller_may_name_itself(server: Server) -> None:
    async with client(user_agent="Sluice-Test") as http:
        await http.get(f"http://127.0.0.1:{server.port}/ok")
    assert server.seen[0]["user-agent"] == "Sluice-Test"


async def test_a_redirect_is_answered_not_followed(server: Server) -> None:
    async with client() as http:
        resp = await http.post(f"http://127.0.0.1:{server.port}/moved", content=b"{}")
    assert resp.status_code == 302
    assert server.paths == ["/moved"]


async def test_a_hung_endpoint_times_out(server: Server) -> None:
    async with client(timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{server.port}/hang")


async def test_every_phase_has_the_timeout() -> None:
    async with client(timeout=7.0) as c:
        t = c.timeout
        assert (t.connect, t.read, t.write, t.pool) == (7.0, 7.0, 7.0, 7.0)
        assert c.follow_redirects is False
        assert c.trust_env is True
