"""A burst above ``smtp.max_connections`` waits in the listen backlog (issue #24, point 3).

300 clients connecting at once used to get 200 × ``421 Too many connections``
at the default limit of 100. Now the extra clients wait in the kernel's
backlog and are served as sessions end; only one that waited longer than
``smtp.connection_wait`` hears ``421``. Real SMTP over loopback, against a
real Sluice (in the test's process, and with an accept worker process),
delivering to a real upstream.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest

from relay.inbound.admission import listen_backlog, queued
from tests.conftest import SluiceFactory, eventually, provider_for
from tests.upstream import TestUpstream

CLIENTS = 300


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole reply (its last line), within 60 s."""
    while True:
        line = await asyncio.wait_for(reader.readline(), 60)
        if line[3:4] != b"-":
            return line


async def _send_one(port: int, n: int, connected: asyncio.Barrier) -> bytes:
    """Connect, wait until every client has connected, then send one message; the DATA reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        # Every client's handshake is done (in the backlog or accepted)
        # before any of them speaks: 300 at once, whatever the scheduling.
        await connected.wait()
        greeting = await _reply(reader)
        if not greeting.startswith(b"220"):
            return greeting
        replies = []
        for command in (
            b"EHLO burst.test\r\n",
            b"MAIL FROM:<app@example.org>\r\n",
            f"RCPT TO:<to{n}@example.net>\r\n".encode(),
            b"DATA\r\n",
            f"Subject: burst {n}\r\n\r\nmessage {n}\r\n.\r\n".encode(),
        ):
            writer.write(command)
            replies.append(await _reply(reader))
        writer.write(b"QUIT\r\n")
        await _reply(reader)
        return replies[-1]
    except TimeoutError:
        return b"<no reply within 60 s>"
    finally:
        writer.close()


@pytest.mark.parametrize("workers", [0, 1], ids=["in-daemon", "worker"])
async def test_300_clients_at_once_are_all_served_with_the_default_limit(
    sluice: SluiceFactory, upstream: TestUpstream, workers: int
) -> None:
    async with sluice([provider_for(upstream)], smtp={"workers": workers}) as s:
        assert s.daemon.config.smtp.max_connections == 100  # the default
        listener = s.daemon.listener
        assert listener is not None and listener.admission is not None
        connected = asyncio.Barrier(CLIENTS)
        async with asyncio.timeout(120):
            replies = await asyncio.gather(
                *(_send_one(s.port, n, connected) for n in range(CLIENTS))
            )
        refused = [r for r in replies if not r.startswith(b"250 2.0.0 Ok: queued as")]
        assert not refused, (len(refused), refused[:3])
        if not workers:  # (a worker's sessions are counted in its own process)
            # Memory bounded: never more sessions than the limit, and the limit
            # was reached (the other 200 waited in the backlog, not in the daemon).
            assert listener.admission.peak == 100
        got = await upstream.wait_for(CLIENTS, within=120)
        assert sorted(m.recipients[0] for m in got) == sorted(
            f"to{n}@example.net" for n in range(CLIENTS)
        )
        await eventually(lambda: listener.admission is not None and listener.admission.held == 0)


async def _greeting(port: int) -> tuple[bytes, float, asyncio.StreamWriter]:
    """The first line a new client hears, and how long it took."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    line = await asyncio.wait_for(reader.readline(), 30)
    return line, time.monotonic() - start, writer


@pytest.mark.parametrize("workers", [0, 1], ids=["in-daemon", "worker"])
async def test_a_client_that_waited_longer_than_connection_wait_gets_421(
    sluice: SluiceFactory, upstream: TestUpstream, workers: int
) -> None:
    smtp = {"max_connections": 2, "connection_wait": "1s", "workers": workers}
    async with sluice([provider_for(upstream)], smtp=smtp) as s:
        held = []
        for _ in range(2):
            line, _, writer = await _greeting(s.port)
            assert line.startswith(b"220"), line
            held.append(writer)
        # A third waits in the backlog for the bound, then hears 421 and is closed.
        line, waited, writer = await _greeting(s.port)
        assert line.startswith(b"421 4.7.0 Too many connections (limit 2, waited 1 s)"), line
        assert 1.0 <= waited < 10, waited
        writer.close()
        # Counted in the daemon's /metrics, from a worker too.
        registry = s.daemon.metrics.registry
        await eventually(
            lambda: (
                registry.get_sample_value(
                    "sluice_messages_rejected_total", {"reason": "too_many_connections"}
                )
                == 1
            )
        )
        # A fourth that a session frees up for within the bound is served.
        reader, fourth = await asyncio.open_connection("127.0.0.1", s.port)
        held.pop().close()
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line.startswith(b"220"), line
        for writer in [*held, fourth]:
            writer.close()


async def test_each_waiting_client_gets_its_own_full_wait(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """The bound runs from each client's own arrival, not from the first one's."""
    smtp = {"max_connections": 1, "connection_wait": "1s"}
    async with sluice([provider_for(upstream)], smtp=smtp) as s:
        line, _, held = await _greeting(s.port)
        assert line.startswith(b"220"), line
        first = asyncio.create_task(_greeting(s.port))
        # Not a wait for something to happen: the second client is meant to
        # arrive later than the first, and must not be refused with it.
        await asyncio.sleep(0.5)
        second = asyncio.create_task(_greeting(s.port))
        for task in (first, second):
            line, waited, writer = await task
            assert line.startswith(b"421 4.7.0"), line
            assert 1.0 <= waited < 10, waited
            writer.close()
        held.close()


def test_the_backlog_holds_a_burst_of_twice_the_limit() -> None:
    assert listen_backlog(100) == 200
    assert listen_backlog(10) == 128


def test_the_clients_waiting_in_the_backlog_are_counted() -> None:
    """What the lower bound of each client's wait is built from."""
    with socket.create_server(("127.0.0.1", 0), backlog=16) as server:
        port = server.getsockname()[1]
        assert queued(server) == 0
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            # Linux counts them (TCP_INFO); elsewhere only "someone waits" is known.
            assert queued(server) == (3 if sys.platform == "linux" else 1)
            server.accept()[0].close()
            assert queued(server) == (2 if sys.platform == "linux" else 1)
        finally:
            for client in clients:
                client.close()
