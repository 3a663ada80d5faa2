"""PostgreSQL down: at start one line and exit 75; while running 451 and no loss (#27).

The daemon is a real ``sluice serve`` process on the tests' private cluster
(``tests/pg.py``), which these tests stop with ``pg_ctl -m fast stop`` and
start again, as a restart or failover of the database would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import aiosmtplib

from tests.conftest import eventually, provider_for, smtp_send
from tests.daemon_proc import DaemonProcess, run_cli
from tests.peers import free_port, require, run_peer
from tests.pg import ROLE, PgCluster, PgDatabase
from tests.upstream import TestUpstream

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n\r\nbody\r\n"
#: the spool password, from the daemon's environment (never to be shown)
PW_ENV = "SLUICE_TEST_SPOOL_PW"


async def test_unreachable_at_start_is_one_line_naming_spool_url(
    ops_config: Callable[..., Path], pg_db: PgDatabase
) -> None:
    """Nothing listens at the URL, or the password is refused: one line, exit 75.

    The line names ``spool.url`` and says libpq's reason; no traceback, never
    the password. ``serve`` exits as for the spool's other start errors (75:
    systemd restarts it, and the database may be back by then).
    """
    secret = "do-not-print-me-7f3a"
    nobody = f"postgresql://{ROLE}@127.0.0.1:{free_port()}/sluice"
    for url, why in ((nobody, "Connection refused"), (pg_db.url, "password authentication")):
        path = ops_config(
            [{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}],
            spool={"url": url, "password_env": PW_ENV},
        )
        for argv in (["serve"], ["queue", "list"]):
            rc, out, err = await run_cli(*argv, "-c", str(path), env={PW_ENV: secret})
            assert rc == os.EX_TEMPFAIL, (argv, out, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, (argv, err)
            assert f"spool.url {url}" in lines[0] and why in lines[0], lines[0]
            assert "Traceback" not in err and secret not in err + out


async def _send(port: int, subject: bytes) -> str:
    """One message; the DATA reply's text on 250, or the refusal's code and text.

    A refusal at ``MAIL`` (before the body is sent) is marked ``MAIL:``.
    """
    try:
        _refused, reply = await smtp_send(port, "a@example.org", ["b@example.net"], MSG % subject)
    except aiosmtplib.SMTPSenderRefused as exc:
        return f"MAIL: {exc.code} {exc.message}"
    except aiosmtplib.SMTPResponseException as exc:
        return f"{exc.code} {exc.message}"
    return f"250 {reply}"


async def test_database_stopped_while_running_answers_451_then_delivers_all(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    pg_cluster: PgCluster,
    pg_db: PgDatabase,
) -> None:
    path = ops_config(
        [provider_for(upstream)],
        spool={"url": pg_db.url, "password_env": PW_ENV, "node": "n1"},
        smtp={"workers": 1},  # as in production on 2 cores: an accept worker stores the mail
        # Its sender reads the store's outbox every second: it must live through it too.
        notify={"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/hook", "secret": "k"}]},
    )
    env = {PW_ENV: pg_db.password}
    d = await daemon_proc(path, env=env).start()
    # The provider is paused first (by the CLI, on the same database): what is
    # accepted waits in the database through the outage.
    rc, out, err = await run_cli("providers", "pause", "up1", "-c", str(path), env=env)
    assert rc == 0, (out, err)
    rc, out, err = await run_cli("providers", "list", "--json", "-c", str(path), env=env)
    assert rc == 0, err
    assert [p["paused"]["by"][:4] for p in json.loads(out)] == ["cli:"], out  # from the store
    acked: list[bytes] = []
    for i in range(3):
        subject = b"before-%d" % i
        assert (await _send(d.port, subject)).startswith("250"), subject
        acked.append(subject)

    async def all_waiting() -> bool:
        # Each was claimed once and given back to wait for the pause (none in flight).
        rc, out, err = await run_cli("queue", "list", "--json", "-c", str(path), env=env)
        assert rc == 0, err
        entries = json.loads(out)
        assert {e["node"] for e in entries} == {"n1"}  # who accepted them (a fleet's column)
        statuses = [e["status"] for e in entries]
        return len(statuses) == 3 and "sending" not in statuses

    await eventually(all_waiting, interval=0.2)
    pg_cluster.stop()
    try:
        mark = len(d.lines)
        answers = [await _send(d.port, b"during-%d" % i) for i in range(4)]
        for answer in answers:
            assert answer.removeprefix("MAIL: ").startswith("451 4.3.0"), answer
            assert "spool database is unreachable" in answer, answer
        # Once the store is known to be out of reach, mail is refused before its body
        # (as for a full disk); the first message finds out at DATA.
        assert not answers[0].startswith("MAIL:"), answers
        assert any(a.startswith("MAIL:") for a in answers[1:]), answers
        # A client nobody here wrote reads the same answer as a temporary failure.
        code, out = await run_peer(
            require("swaks"),
            *("--server", f"127.0.0.1:{d.port}", "--from", "app@example.org"),
            *("--to", "b@example.net", "--h-Subject", "during-swaks"),
        )
        assert code != 0 and "451 4.3.0" in out and "unreachable" in out, out
        # The daemon survives the outage (its scheduler keeps trying) and says why once.
        await d.wait_line("refusing mail", start=mark)
        assert d.proc is not None and d.proc.returncode is None
        # `sluice reload` reads this node's files, not the database: it works now, from a
        # shell without the database's password.
        rc, out, err = await run_cli("reload", "-c", str(path))
        assert rc == 0 and "reloaded its configuration" in out, (out, err)
    finally:
        pg_cluster.start()

    # Back: the writer connects again by itself; mail is taken at the next try.
    async def taken() -> bool:
        return (await _send(d.port, b"after")).startswith("250")

    await eventually(taken, within=20, interval=0.5)
    acked.append(b"after")
    assert upstream.messages == []  # paused all along
    rc, out, err = await run_cli("providers", "resume", "up1", "-c", str(path), env=env)
    assert rc == 0, (out, err)
    got = await upstream.wait_for(len(acked), within=30)
    subjects = sorted(
        line.split(b": ", 1)[1]
        for m in got
        for line in m.data.split(b"\r\n")
        if line.startswith(b"Subject: ")
    )
    # Every acknowledged message, once; none of the refused ones.
    assert subjects == sorted(acked)
    await d.wait_line("reachable again")
    assert await d.stop() == 0


async def test_sendmail_with_no_daemon_writes_the_store_only_with_its_password(
    ops_config: Callable[..., Path], upstream: TestUpstream, pg_db: PgDatabase
) -> None:
    """No daemon listens: a caller holding the store's password queues into it; others get 75."""
    path = ops_config(
        [provider_for(upstream)],
        spool={"url": pg_db.url, "password_env": PW_ENV, "node": "web7"},
    )
    message = b"To: r@example.net\nSubject: by sendmail\n\nbody\n"
    rc, _out, err = await run_cli(
        "sendmail", "-t", "-i", "-v", stdin=message, env={"SLUICE_CONFIG": str(path)}
    )
    assert rc == os.EX_TEMPFAIL, err  # no password in this caller's environment
    assert "spool.url" in err and pg_db.password not in err
    env = {"SLUICE_CONFIG": str(path), PW_ENV: pg_db.password}
    rc, _out, err = await run_cli("sendmail", "-t", "-i", "-v", stdin=message, env=env)
    assert rc == 0, err
    assert f"in {pg_db.url} (sent when sluice runs)" in err
    rc, out, err = await run_cli("queue", "list", "--json", "-c", str(path), env=env)
    assert rc == 0, err
    assert [(e["email"], e["node"]) for e in json.loads(out)] == [("r@example.net", "web7")]
    rc, out, err = await run_cli("queue", "list", "-c", str(path), env=env)
    assert rc == 0, err
    head, row = out.splitlines()[:2]
    assert head.split()[:3] == ["QUEUE", "ID", "NODE"] and row.split()[1] == "web7", out
