"""Operator controls across a restart, with the real daemon and the real ``sluice`` CLI.

Hold, pause and reroute are stored in the spool: each test kills the daemon
with SIGKILL while the control is in force, starts it again, and shows that
the control still holds, then that lifting it (or its end) delivers the mail.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import aiosmtplib

from tests.conftest import eventually, fast_config, provider_for, write_config
from tests.daemon_proc import DaemonProcess, run_cli, start_daemon
from tests.upstream import TestUpstream

SENDER = "app@example.org"


async def send(port: int, rcpt: str, subject: str, headers: str = "") -> str:
    data = f"Subject: {subject}\r\n{headers}\r\nbody of {subject}\r\n".encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=20) as client:
        _refused, reply = await client.sendmail(SENDER, [rcpt], data)
    return reply.rsplit(" ", 1)[-1]


async def cli(config: Path, *args: str) -> str:
    rc, out, err = await run_cli(*args, "-c", str(config))
    assert rc == 0, (args, rc, out, err)
    return out


async def queue(config: Path) -> dict[str, dict[str, Any]]:
    out = await cli(config, "queue", "list", "--json")
    return {e["queue_id"]: e for e in json.loads(out)}


async def crash(daemon: DaemonProcess) -> None:
    daemon.kill_group()
    assert await daemon.wait() == -signal.SIGKILL


def subjects(up: TestUpstream) -> list[str]:
    found = []
    for m in up.messages:
        for line in m.data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                found.append(line[9:].decode())
    return found


async def test_hold_survives_sigkill_and_release_delivers(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    config = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream)]))
    await upstream.stop()  # the first attempt defers: the message waits in the queue
    daemon = await start_daemon(config)
    try:
        qid = await send(daemon.port, "a@example.net", "held one")

        async def hold() -> bool:
            out = await cli(config, "queue", "hold", qid, "--reason", "incident 42")
            return "held 1 recipient" in out  # 0 while an attempt is under way

        await eventually(hold, within=30, interval=0.1)
        assert (await queue(config))[qid]["status"] == "held"
        await crash(daemon)
    finally:
        await daemon.kill()
    await upstream.restart()
    daemon = await start_daemon(config)
    try:
        # A message sent after the restart is delivered: the scheduler runs,
        # and had every chance to take the held one too.
        other = await send(daemon.port, "b@example.net", "free one")
        await upstream.wait_for(1, within=30)
        await eventually(lambda: _status(config, other, "sent"), within=30)
        entry = (await queue(config))[qid]
        assert (
            entry["status"] == "held"
            and entry["reason"] == "held by cli:" + entry["reason"].split("cli:", 1)[1]
        )
        assert "incident 42" in entry["reason"]
        assert subjects(upstream) == ["free one"]

        out = await cli(config, "queue", "release", qid)
        assert "released 1 recipient" in out
        await upstream.wait_for(2, within=30)
        assert sorted(subjects(upstream)) == ["free one", "held one"]
        await eventually(lambda: _status(config, qid, "sent"), within=30)
        audit = await _audit(tmp_path)
        assert [a["action"] for a in audit][-2:] == ["hold", "release"]
        assert all(a["actor"].startswith("cli:") and a["count"] == 1 for a in audit[-2:])
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def _status(config: Path, qid: str, status: str) -> bool:
    return (await queue(config)).get(qid, {}).get("status") == status


async def _audit(tmp_path: Path) -> list[dict[str, Any]]:
    from relay.store.spool import Spool

    async with await Spool.open(tmp_path / "spool.sqlite3") as spool:
        entries = await spool.audit_log(limit=100)
    return [
        {"action": e.action, "actor": e.actor, "count": e.count, "target": e.target}
        for e in reversed(entries)
    ]


async def test_timed_pause_resumes_by_itself(tmp_path: Path, upstream: TestUpstream) -> None:
    config = write_config(
        tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream, "main")])
    )
    daemon = await start_daemon(config)
    try:
        before = time.time()
        out = await cli(config, "providers", "pause", "main", "--for", "2s", "--reason", "incident")
        assert "paused until" in out
        qid = await send(daemon.port, "a@example.net", "paused one")  # still accepted
        # Delivered once the pause ran out by itself, not before ...
        await upstream.wait_for(1, within=30)
        assert time.time() >= before + 2
        done = await eventually(lambda: _sent(config, qid), within=30)
        # ... after waiting with the operator's reason, without counting an attempt.
        assert done["attempts"] == 1 and done["provider"] == "main"
        shown = await cli(config, "queue", "show", qid)
        assert "deferred 4.7.0 waiting: main: paused by operator: incident until" in shown
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def _waiting(config: Path, qid: str) -> dict[str, Any] | None:
    entry = (await queue(config)).get(qid)
    if entry is not None and "paused by operator" in entry["reason"]:
        return entry
    return None


async def _sent(config: Path, qid: str) -> dict[str, Any] | None:
    entry = (await queue(config)).get(qid)
    return entry if entry is not None and entry["status"] == "sent" else None


async def test_pause_survives_sigkill_and_resume_delivers(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    config = write_config(
        tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream, "main")])
    )
    daemon = await start_daemon(config)
    try:
        await cli(config, "providers", "pause", "--all", "--reason", "provider incident")
        qid = await send(daemon.port, "a@example.net", "paused one")
        await eventually(lambda: _waiting(config, qid), within=10)
        await crash(daemon)
    finally:
        await daemon.kill()
    daemon = await start_daemon(config)
    try:
        # Restarted: a crash leaves it queued and due; the pause, read from
        # the spool, makes it wait again rather than go out.
        entry = await eventually(lambda: _waiting(config, qid), within=10)
        assert entry["attempts"] == 0
        assert upstream.messages == []
        out = await cli(config, "providers", "resume", "--all")
        assert "delivery resumed" in out
        await upstream.wait_for(1, within=30)
        await eventually(lambda: _sent(config, qid), within=30)
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def test_reroute_while_stopped_delivers_through_the_other_provider(
    tmp_path: Path, upstream: TestUpstream, upstream2: TestUpstream
) -> None:
    cfg = fast_config(
        tmp_path,
        [provider_for(upstream, "main"), provider_for(upstream2, "other", priority=200)],
        routes=[{"recipient_domain": ["example.net"], "providers": ["main"]}],
    )
    config = write_config(tmp_path / "sluice.yaml", cfg)
    await upstream.stop()  # main is down, and routing allows only main
    daemon = await start_daemon(config)
    try:
        qid = await send(daemon.port, "a@example.net", "stuck one")
        await eventually(lambda: _status(config, qid, "deferred"), within=30)
        await crash(daemon)
    finally:
        await daemon.kill()
    out = await cli(config, "queue", "reroute", qid, "--via", "other")
    assert "rerouted 1 recipient" in out
    rc, _out, err = await run_cli("queue", "reroute", qid, "--via", "nope", "-c", str(config))
    assert rc == 64 and "no enabled provider 'nope'" in err
    daemon = await start_daemon(config)
    try:
        (got,) = await upstream2.wait_for(1, within=30)
        assert got.recipients == ["a@example.net"]
        done = await eventually(lambda: _sent(config, qid), within=30)
        assert done["provider"] == "other"
        assert upstream.messages == []
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
    audit = await _audit(tmp_path)
    assert audit[-1]["action"] == "reroute" and audit[-1]["count"] == 1


async def test_cli_refuses_an_empty_selection_and_counts_a_dry_run(
    tmp_path: Path, upstream: TestUpstream
) -> None:
    config = write_config(tmp_path / "sluice.yaml", fast_config(tmp_path, [provider_for(upstream)]))
    rc, _out, err = await run_cli("queue", "hold", "-c", str(config))
    assert rc == 64 and "give queue IDs, a filter, or --all" in err
    rc, out, _err = await run_cli("queue", "hold", "--all", "--dry-run", "-c", str(config))
    assert rc == 0 and "would hold 0 recipients of 0 messages" in out
    rc, _out, err = await run_cli("providers", "pause", "nope", "-c", str(config))
    assert rc == 64 and "no provider 'nope'" in err
    rc, out, _err = await run_cli("providers", "resume", "up1", "-c", str(config))
    assert rc == 0 and "was not paused" in out
