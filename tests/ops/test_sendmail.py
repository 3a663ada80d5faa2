"""``sluice sendmail``: the argv real callers use, message preparation, and end to end."""

from __future__ import annotations

import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.inbound.sendmail import Options, UsageError, parse_args, prepare
from tests.conftest import provider_for
from tests.daemon_proc import DaemonProcess, run_cli
from tests.upstream import TestUpstream

# ------------------------------------------------------------------ argv


@pytest.mark.parametrize(
    ("caller", "argv", "expected"),
    [
        ("PHP mail()", ["-t", "-i"], {"from_headers": True, "ignore_dots": True}),
        (
            "PHP mail() with -f",
            ["-t", "-i", "-f", "bounce@example.org"],
            {"from_headers": True, "sender": "bounce@example.org"},
        ),
        (
            "cronie",
            ["-FCronDaemon", "-i", "-odi", "-oem", "-oi", "-t", "-f", "root"],
            {
                "full_name": "CronDaemon",
                "ignore_dots": True,
                "from_headers": True,
                "sender": "root",
            },
        ),
        (
            "Debian cron",
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            {"full_name": "CronDaemon", "recipients": ["root"], "from_headers": False},
        ),
        (
            "systemd-cron",
            ["-i", "-B", "8BITMIME", "user@example.net"],
            {"recipients": ["user@example.net"]},
        ),
        (
            "anacron",
            ["-FAnacron", "-odi", "root"],
            {"full_name": "Anacron", "recipients": ["root"]},
        ),
        (
            "mdadm (glued -f)",
            ["-t", "-fraid@example.org"],
            {"from_headers": True, "sender": "raid@example.org"},
        ),
        ("busybox (grouped)", ["-ti"], {"from_headers": True, "ignore_dots": True}),
        (
            "git send-email",
            ["-i", "a@example.net", "b@example.net"],
            {"ignore_dots": True, "recipients": ["a@example.net", "b@example.net"]},
        ),
        (
            "operands before options, then --",
            ["x@example.net", "-i", "--", "-alias@example.net"],
            {"recipients": ["x@example.net", "-alias@example.net"]},
        ),
        (
            "comma-separated operand",
            ["-oi", "a@example.net, B <b@example.net>"],
            {"recipients": ["a@example.net", "b@example.net"]},
        ),
        ("ignored flags", ["-v", "-N", "never", "-bm", "-oQ/tmp", "-t"], {"verbose": True}),
        ("-q alone", ["-q"], {"queue_run": True}),
        (
            "sluice's -c FILE",
            ["-c", "/etc/sluice/other.yaml", "r@example.net"],
            {"config": "/etc/sluice/other.yaml", "recipients": ["r@example.net"]},
        ),
        ("sendmail's -C, glued", ["-C/x.yaml", "-t"], {"config": "/x.yaml"}),
        ("--help", ["--help"], {"show_help": True, "recipients": []}),
        ("newaliases", ["-bi"], {"mode": "i"}),
    ],
)
def test_real_callers_argv(caller: str, argv: list[str], expected: dict[str, object]) -> None:
    opts = parse_args(argv)
    for key, value in expected.items():
        assert getattr(opts, key) == value, (caller, key)


@pytest.mark.parametrize(
    "argv", [["-Z"], ["-f"], ["-f", "a@x\r\nRCPT TO:<evil@x>"], ["-F", "A\nB", "r@x"]]
)
def test_bad_argv_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        parse_args(argv)


# ------------------------------------------------------------------ message


def _prep(raw: bytes, **opts: object) -> tuple[bytes, list[str]]:
    o = Options(**opts)  # type: ignore[arg-type]
    p = prepare(raw, o, sender="me@host.example", domain="host.example", now=1_700_000_000)
    return p.data, p.recipients


def test_t_takes_to_cc_bcc_and_removes_bcc() -> None:
    raw = (
        b"From: Me <me@example.org>\n"
        b"To: a@example.net, B <b@example.net>\n"
        b"Cc: c@example.net\n"
        b"Bcc: hidden@example.net,\n"
        b"  other-hidden@example.net\n"
        b"Subject: hi\n"
        b"\n"
        b"body\n"
    )
    data, rcpts = _prep(raw, from_headers=True, ignore_dots=True, recipients=["extra@x.example"])
    assert rcpts == [
        "extra@x.example",
        "a@example.net",
        "b@example.net",
        "c@example.net",
        "hidden@example.net",
        "other-hidden@example.net",
    ]
    assert b"hidden" not in data
    assert b"\r\nSubject: hi\r\n" in data
    assert data.startswith(b"From: Me <me@example.org>\r\nTo: a@example.net, B <b@example.net>\r\n")
    assert data.endswith(b"\r\n\r\nbody\r\n")


def test_missing_headers_are_added_and_line_endings_become_crlf() -> None:
    data, rcpts = _prep(
        b"Subject: x\nline\r\nbare cr\rend", full_name="Cron Daemon", recipients=["root"]
    )
    assert rcpts == ["root@host.example"]  # local names are qualified
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"From: Cron Daemon <me@host.example>" in head
    assert b"\r\nDate: " in head and b"\r\nMessage-ID: <" in head and b"@host.example>" in head
    assert body == b"line\r\nbare cr\r\nend\r\n"
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_existing_headers_are_kept_and_non_ascii_name_is_encoded() -> None:
    raw = b"From: x@example.org\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <id@x>\n\nb\n"
    data, _ = _prep(raw, recipients=["r@example.net"], full_name="Zoë")
    assert data.count(b"From:") == 1 and data.count(b"Date:") == 1
    assert data.count(b"Message-ID:") == 1
    data, _ = _prep(b"Subject: s\n\nb\n", recipients=["r@example.net"], full_name="Zoë")
    assert b"From: =?utf-8?" in data


def test_a_lone_dot_ends_input_unless_i() -> None:
    raw = b"Subject: s\n\nbefore\n.\nafter\n"
    data, _ = _prep(raw, recipients=["r@example.net"])
    assert data.endswith(b"before\r\n") and b"after" not in data
    data, _ = _prep(raw, recipients=["r@example.net"], ignore_dots=True)
    assert data.endswith(b"before\r\n.\r\nafter\r\n")


def test_no_header_block_means_all_body() -> None:
    data, _ = _prep(b"just some text: with a colon later\nmore\n", recipients=["r@example.net"])
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"just some text: with a colon later\r\nmore\r\n"
    assert b"From: me@host.example" in head


# ------------------------------------------------------------------ end to end


MESSAGE = (
    b"From: App <app@example.org>\n"
    b"To: to@example.net\n"
    b"Bcc: secret-rcpt@example.net\n"
    b"Subject: sendmail e2e\n"
    b"\n"
    b"Hello.\n"
    b".\n"
    b"Still here (-i).\n"
)


async def test_sendmail_t_through_the_running_daemon(
    daemon_with_own_secret: tuple[Path, DaemonProcess], upstream: TestUpstream
) -> None:
    # Submitting needs no secret, so the caller lacking the daemon's must not matter.
    path, d = daemon_with_own_secret
    env = {"SLUICE_CONFIG": str(path)}
    rc, _out, err = await run_cli(
        "sendmail", "-t", "-i", "-f", "bounce@example.org", stdin=MESSAGE, env=env
    )
    assert rc == 0, err
    (got,) = await upstream.wait_for(1)
    assert got.sender == "bounce@example.org"
    assert sorted(got.recipients) == ["secret-rcpt@example.net", "to@example.net"]
    assert b"Bcc" not in got.data and b"secret-rcpt" not in got.data.split(b"\r\n\r\n", 1)[1]
    assert b"Received: from " in got.data  # it came in through the SMTP listener
    assert got.data.endswith(b"Hello.\r\n.\r\nStill here (-i).\r\n")
    assert await d.stop() == 0


async def test_invoked_through_a_link_named_sendmail(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    # The console script sits beside the interpreter of the environment the
    # test command set up (pip install -e .); it must be there.
    entry = Path(sys.executable).parent / "sluice"
    assert entry.exists(), f"{entry} is missing: install the package (bash .ci/run does)"
    link = tmp_path / "sendmail"
    link.symlink_to(entry)
    # Cron mails root: a local name, delivered through its alias (issue #26).
    path = ops_config([provider_for(upstream)], aliases={"root": "ops@example.net"})
    d = await daemon_proc(path).start()
    rc, _out, err = await run_cli(
        "-FCronDaemon",
        "-i",
        "-B8BITMIME",
        "-oem",
        "root",
        argv0=str(link),
        stdin=b"Subject: cron\n\nout\n",
        env={"SLUICE_CONFIG": str(path)},
    )
    assert rc == 0, err
    (got,) = await upstream.wait_for(1)
    assert got.recipients == ["ops@example.net"]
    assert b"From: CronDaemon <" in got.data
    assert await d.stop() == 0


async def test_daemon_down_spools_directly_then_delivers_on_start(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    spool = path.parent / "spool.sqlite3"
    # Run once so the spool exists (as after installation), then stop.
    d = await daemon_proc(path).start()
    assert await d.stop() == 0

    env = {"SLUICE_CONFIG": str(path)}
    rc, _out, err = await run_cli("sendmail", "-t", "-i", "-v", stdin=MESSAGE, env=env)
    assert rc == 0, err
    assert "queued as" in err and "(sent when sluice runs)" in err
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT status FROM recipients").fetchall()
    finally:
        conn.close()
    assert sorted(r[0] for r in rows) == ["queued", "queued"]
    assert not upstream.messages

    d2 = await daemon_proc(path).start()
    (got,) = await upstream.wait_for(1)
    assert sorted(got.recipients) == ["secret-rcpt@example.net", "to@example.net"]
    assert b"(Sluice sendmail, uid " in got.data
    assert b"Bcc" not in got.data
    assert await d2.stop(signal.SIGTERM) == 0


async def test_daemon_down_and_no_spool_exits_75(
    ops_config: Callable[..., Path], tmp_path: Path
) -> None:
    path = ops_config(
        [{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}],
        spool={"path": str(tmp_path / "never-created" / "spool.sqlite3")},
    )
    rc, _out, err = await run_cli(
        "sendmail", "r@example.net", stdin=b"Subject: s\n\nb\n", env={"SLUICE_CONFIG": str(path)}
    )
    assert rc == 75
    assert "NOT sent" in err


async def test_listener_refusal_maps_to_sysexits(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)], smtp={"max_message_size": 200})
    d = await daemon_proc(path).start()
    env = {"SLUICE_CONFIG": str(path)}
    rc, _out, err = await run_cli(
        "sendmail", "r@example.net", stdin=b"Subject: big\n\n" + b"x" * 500 + b"\n", env=env
    )
    assert rc == 65, err  # EX_DATAERR: 552 message too big
    assert "552" in err
    rc, _out, err = await run_cli("sendmail", "-t", stdin=b"Subject: nobody\n\nb\n", env=env)
    assert rc == 64 and "no recipients" in err
    rc, _out, err = await run_cli("sendmail", "-bs", stdin=b"", env=env)
    assert rc == 64 and "-bs is not supported" in err
    rc, _out, err = await run_cli("sendmail", "user@@example.net", stdin=b"x\n", env=env)
    assert rc == 67 and "bad recipient address" in err
    assert not upstream.messages
    assert await d.stop() == 0


def test_unreadable_config_falls_back_to_the_default_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PHP as www-data may not read /etc/sluice/config.yaml; it still reaches 127.0.0.1:25."""
    import io
    import socket

    from relay.inbound import sendmail

    probe = socket.socket()
    try:
        if probe.connect_ex(("127.0.0.1", 25)) == 0:
            pytest.skip("something listens on 127.0.0.1:25 here")
    finally:
        probe.close()
    from relay.config import SpoolSettings

    if SpoolSettings().path.exists():
        pytest.skip("a real Sluice spool exists on this machine; not writing into it")
    # Root reads everything, so the permission check itself is stood in for.
    monkeypatch.setattr(sendmail, "_unreadable", lambda path: True)
    missing = tmp_path / "unreadable.yaml"
    rc = sendmail.run(
        ["-v", "r@example.net"],
        io.BytesIO(b"Subject: s\n\nb\n"),
        environ={"SLUICE_CONFIG": str(missing)},
    )
    err = capsys.readouterr().err
    assert f"cannot read {missing}; using the defaults" in err
    assert "cannot connect to 127.0.0.1:25" in err
    assert rc == 75
