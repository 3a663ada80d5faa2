"""``smtp.workers``: accept worker processes in front of the daemon's scheduler.

The daemon runs in-process here, its worker as a real child process serving
the daemon's real sockets; mail goes over loopback SMTP to a real upstream.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from relay.config import AUTO_WORKERS_MAX, SmtpSettings, auto_workers
from relay.inbound.workers import AcceptorPool
from tests.conftest import (
    Running,
    SluiceFactory,
    eventually,
    fast_config,
    provider_for,
    raw_session,
    smtp_send,
    write_config,
)
from tests.daemon_proc import start_daemon
from tests.upstream import TestUpstream

WORKER = {"workers": 1}
BODY = b"Subject: via a worker\r\nX-Token: w1\r\n\r\n.leading dot\r\n\xc3\xa9 8-bit line\r\n"


def received(s: Running, name: str) -> float:
    value = s.daemon.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


def worker_pids(s: Running) -> list[int]:
    assert s.daemon.acceptors is not None
    return s.daemon.acceptors.pids


async def test_a_worker_accepts_and_the_daemon_delivers(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)], smtp=WORKER) as s:
        assert s.daemon.listener is not None
        # The daemon holds the socket but does not accept on it: the worker does.
        assert not any(srv.is_serving() for srv in s.daemon.listener.servers)
        assert s.daemon.accepting and s.daemon.acceptors is not None
        assert s.daemon.acceptors.alive == 1 and os.getpid() not in worker_pids(s)

        refused, reply = await smtp_send(s.port, "app@example.org", ["to@example.net"], BODY)
        assert refused == {} and "queued as" in reply
        (msg,) = await upstream.wait_for(1)
        # Byte for byte: our Received header, then exactly what the app sent.
        header, rest = msg.data.split(b"\r\nSubject:", 1)
        assert header.startswith(b"Received: from ") and b"Sluice" in header
        assert b"Subject:" + rest == BODY
        # The worker's events reach the daemon's /metrics.
        assert received(s, "sluice_messages_received_total") == 1
        assert received(s, "sluice_received_bytes_total") == len(msg.data)


@pytest.mark.parametrize(
    ("commands", "code"),
    [
        ([b"EHLO x\r\n", b"MAIL FROM:<app@example.org> SIZE=999999\r\n"], "552"),
        ([b"EHLO x\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<broken\r\n"], "501"),
        (
            [
                b"EHLO x\r\n",
                b"MAIL FROM:<a@example.org>\r\n",
                b"RCPT TO:<b@example.net>\r\n",
                b"DATA\r\n",
                b"Subject: x\r\n\r\nbare\nLF\r\n.\r\n",
            ],
            "550",
        ),
    ],
    ids=["oversize", "bad-recipient", "bare-lf"],
)
async def test_a_worker_gives_the_listeners_answers(
    sluice: SluiceFactory, upstream: TestUpstream, commands: list[bytes], code: str
) -> None:
    async with sluice([provider_for(upstream)], smtp={**WORKER, "max_message_size": "10KiB"}) as s:
        replies = await raw_session(s.port, commands)
        assert replies[0].startswith("220 sluice.test")
        assert replies[-1].startswith(code), replies
        assert sum((await s.spool.counts_by_status()).values()) == 0
        if code == "550":
            await eventually(
                lambda: (
                    s.daemon.metrics.registry.get_sample_value(
                        "sluice_messages_rejected_total", {"reason": "bare_line_ending"}
                    )
                    == 1
                )
            )


async def test_a_killed_worker_is_replaced(sluice: SluiceFactory, upstream: TestUpstream) -> None:
    async with sluice([provider_for(upstream)], smtp=WORKER) as s:
        (first,) = worker_pids(s)
        os.kill(first, signal.SIGKILL)
        await eventually(
            lambda: (
                worker_pids(s) != [first]
                and s.daemon.acceptors is not None
                and s.daemon.acceptors.alive == 1
            )
        )
        refused, reply = await smtp_send(s.port, "app@example.org", ["to@example.net"], BODY)
        assert refused == {} and "queued as" in reply
        await upstream.wait_for(1)


def _start_through(s: Running, launcher: Path) -> AcceptorPool:
    """From now on, workers are started by ``launcher``, which works once ``_launcher`` wrote it."""
    pool = s.daemon.acceptors
    assert pool is not None and s.daemon.listener is not None
    pool.command = (str(launcher), "-m", "relay.inbound.workers")
    return pool


def _launcher(path: Path) -> None:
    """A stand-in for the interpreter that starts workers, written once it may work."""
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    path.chmod(0o755)


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.name == "sluice.acceptor")


@pytest.mark.parametrize("broken", ["missing", "exits at once"])
async def test_a_worker_that_cannot_be_started_is_tried_again_until_it_starts(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    """As when the interpreter is missing or broken for a moment during an upgrade."""
    async with sluice([provider_for(upstream)], smtp=WORKER) as s:
        launcher = tmp_path / "python"
        if broken == "exits at once":
            launcher.write_text("#!/bin/sh\nexit 3\n")
            launcher.chmod(0o755)
        pool = _start_through(s, launcher)
        (first,) = worker_pids(s)
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: _logged(caplog, "could not start accept worker") >= 1)
        assert not s.daemon.accepting  # what /healthz reports
        _launcher(launcher)
        await eventually(lambda: pool.alive == 1, within=30)
        refused, reply = await smtp_send(s.port, "app@example.org", ["to@example.net"], BODY)
        assert refused == {} and "queued as" in reply
        await upstream.wait_for(1)


async def test_a_rebind_whose_new_worker_cannot_start_stops_the_old_one_and_tries_again(
    sluice: SluiceFactory,
    upstream: TestUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with sluice([provider_for(upstream)], smtp=WORKER) as s:
        (old_pid,) = worker_pids(s)
        launcher = tmp_path / "python"
        pool = _start_through(s, launcher)
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["smtp"]["listen"] = ["127.0.0.2:0"]
        write_config(s.config_path, cfg)
        assert await s.daemon.reload()  # the new config is in force
        assert _logged(caplog, "on the new sockets") == 1
        # The old worker's sockets are no longer wanted: it stops.
        await eventually(lambda: not _alive(old_pid))
        _launcher(launcher)
        await eventually(lambda: pool.alive == 1, within=30)
        assert s.daemon.listener is not None
        (ep,) = s.daemon.listener.addresses
        refused, reply = await smtp_send(
            ep.port, "app@example.org", ["to@example.net"], BODY, host="127.0.0.2"
        )
        assert refused == {} and "queued as" in reply
        await upstream.wait_for(1)


async def test_reload_reaches_the_workers(
    sluice: SluiceFactory, upstream: TestUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100  # about 7 KB
    async with sluice([provider_for(upstream)], smtp=WORKER) as s:
        refused, _ = await smtp_send(s.port, "app@example.org", ["to@example.net"], big)
        assert refused == {}
        old_port, (old_pid,) = s.port, worker_pids(s)

        # A smaller size limit: the same worker, new settings.
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["smtp"]["max_message_size"] = "4KiB"
        write_config(s.config_path, cfg)
        assert await s.daemon.reload()
        assert worker_pids(s) == [old_pid]

        # The worker applies new settings when it reads them from its channel,
        # as Postfix's processes take a reload: shortly after, not in step.
        async def refused_as_too_big() -> bool:
            replies = await raw_session(
                s.port, [b"EHLO x\r\n", b"MAIL FROM:<a@b.org> SIZE=7000\r\n"]
            )
            return replies[-1].startswith("552")

        assert await eventually(refused_as_too_big, within=10)

        # A new address: new sockets, so a new worker serves them.
        cfg["smtp"]["listen"] = ["127.0.0.2:0"]
        write_config(s.config_path, cfg)
        assert await s.daemon.reload()
        assert s.daemon.listener is not None
        (ep,) = s.daemon.listener.addresses
        assert ep.host == "127.0.0.2" and ep.port != old_port
        assert worker_pids(s) != [old_pid] and s.daemon.acceptors is not None
        assert s.daemon.acceptors.alive == 1
        refused, reply = await smtp_send(
            ep.port, "app@example.org", ["to@example.net"], BODY, host="127.0.0.2"
        )
        assert refused == {} and "queued as" in reply
        await upstream.wait_for(2)
    # The replaced worker stopped when told to (it was not killed after a timeout).
    problems = [r.getMessage() for r in caplog.records if r.name == "sluice.acceptor"]
    assert not [m for m in problems if "did not stop" in m or "exited with" in m], problems


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


async def test_sigterm_stops_the_workers_and_sigkill_leaves_none_behind(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    path = write_config(
        tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream)], smtp=WORKER)
    )
    daemon = await start_daemon(path)
    try:
        assert daemon.proc is not None
        (worker,) = _children(daemon.proc.pid)
        refused, _ = await smtp_send(daemon.port, "app@example.org", ["to@example.net"], BODY)
        assert refused == {}
        assert await daemon.stop(signal.SIGTERM) == 0
        assert not _alive(worker)

        # The daemon alone killed: its worker sees the channel close and exits,
        # so that a restart can bind the port and nothing writes the spool unseen.
        daemon = await start_daemon(path)
        assert daemon.proc is not None
        (worker,) = _children(daemon.proc.pid)
        daemon.send_signal(signal.SIGKILL)
        await eventually(lambda: not _alive(worker))
        daemon = await start_daemon(path)
        refused, _ = await smtp_send(daemon.port, "app@example.org", ["to@example.net"], BODY)
        assert refused == {}
        await upstream.wait_for(2)
        assert await daemon.stop(signal.SIGTERM) == 0
    finally:
        await daemon.kill()


async def _reply(reader: asyncio.StreamReader, within: float) -> str:
    """The next (last line of a) reply, or ``"<closed>"``; fails past ``within`` seconds."""
    async with asyncio.timeout(within):
        while line := await reader.readline():
            if line[3:4] != b"-":
                return line.decode().strip()
    return "<closed>"


async def test_a_worker_whose_daemon_is_killed_ends_its_sessions_with_421_and_exits(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    """SIGKILL of the daemon alone: its worker 421s open sessions at once and exits.

    One session waits between commands, the other is in the middle of a
    message body. Before, the worker gave them 5 s more, took their mail into
    a spool nobody delivered from, and answered 451 "spool is closed" to one
    still being stored when it closed its spool.
    """
    path = write_config(
        tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream)], smtp=WORKER)
    )
    daemon = await start_daemon(path)
    assert daemon.proc is not None
    (worker,) = _children(daemon.proc.pid)
    streams: list[asyncio.StreamWriter] = []
    try:
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", daemon.port)
        data_r, data_w = await asyncio.open_connection("127.0.0.1", daemon.port)
        streams += [idle_w, data_w]
        for reader, writer, commands in (
            (idle_r, idle_w, [b"EHLO app\r\n", b"MAIL FROM:<a@example.org>\r\n"]),
            (
                data_r,
                data_w,
                [
                    b"EHLO app\r\n",
                    b"MAIL FROM:<a@example.org>\r\n",
                    b"RCPT TO:<b@example.net>\r\n",
                    b"DATA\r\n",
                ],
            ),
        ):
            assert (await _reply(reader, 10)).startswith("220")
            for command in commands:
                writer.write(command)
                assert (await _reply(reader, 10))[:1] in ("2", "3")
        data_w.write(b"Subject: half a message\r\n\r\nthe first line\r\n")
        await data_w.drain()

        daemon.send_signal(signal.SIGKILL)
        # Within 3 s: less than the 5 s a worker used to give its sessions.
        assert (await _reply(idle_r, 3)).startswith("421 4.3.2")
        assert (await _reply(data_r, 3)).startswith("421 4.3.2")
        await eventually(lambda: not _alive(worker), within=5)
        await daemon.wait_line("the daemon is gone", within=5)
        assert "451" not in daemon.output and "Traceback" not in daemon.output
        assert upstream.messages == []
    finally:
        for writer in streams:
            writer.close()
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)
        await daemon.kill()


def test_auto_workers_grow_with_the_cpus() -> None:
    assert [auto_workers(n) for n in (1, 2, 3, 4, 6, 8, 64)] == [0, 1, 1, 2, 3, 4, 4]
    assert AUTO_WORKERS_MAX == 4
    # "auto" is resolved for the CPUs this process may actually use.
    assert SmtpSettings().worker_count == auto_workers(len(os.sched_getaffinity(0)))
    assert SmtpSettings(workers=0).worker_count == 0
