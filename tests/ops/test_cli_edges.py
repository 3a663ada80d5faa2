"""The CLI's rough edges (operator issue #14), each as a user meets it: real processes.

``sluice sendmail -c`` and ``--help``; usage errors exit 64; ``sluice reload``
compares resolved config paths; ``sluice queue list | head`` exits quietly;
the start-up line counts pending recipients only; counts are pluralized.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import eventually, provider_for, smtp_send
from tests.daemon_proc import REPO, DaemonProcess, run_cli
from tests.peers import free_port
from tests.upstream import TestUpstream

pytestmark = pytest.mark.slow

MSG = b"Subject: %s\n\nbody\n"


def _statuses(spool: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return sorted(r[0] for r in conn.execute("SELECT status FROM recipients"))
    finally:
        conn.close()


# ------------------------------------------------------------------ sendmail


async def test_sendmail_takes_c_like_every_subcommand(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    d = await daemon_proc(path).start()
    # No SLUICE_CONFIG: only -c says where the listener is.
    env = {k: v for k, v in os.environ.items() if k != "SLUICE_CONFIG"}
    rc, _out, err = await run_cli(
        "sendmail", "-c", str(path), "to@example.net", stdin=MSG % b"dash c", env=env
    )
    assert rc == 0, err
    (got,) = await upstream.wait_for(1)
    assert got.recipients == ["to@example.net"] and b"Subject: dash c" in got.data
    # Glued, as getopt allows for sendmail's own -C too.
    rc, _out, err = await run_cli("sendmail", f"-c{path}", "to@example.net", stdin=MSG % b"two")
    assert rc == 0, err
    await upstream.wait_for(2)
    assert await d.stop() == 0


async def test_sendmail_help_prints_usage() -> None:
    rc, out, err = await run_cli("sendmail", "--help")
    assert rc == 0, err
    assert out.startswith("usage: sluice sendmail ")
    for option in ("-t", "-i", "-f", "-C, -c FILE", "--help"):
        assert option in out
    assert "Exit codes: 0 accepted, 64 usage" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sendmail", "--bogus", "r@example.net"], "option --bogus not recognized"),
        (["sendmail", "-c"], "option -c requires argument"),
        (["queue", "list", "--bogus"], "unrecognized arguments: --bogus"),
        (["queue"], "the following arguments are required"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        ([], "the following arguments are required: COMMAND"),
        (["demo", "--admin-port", "x"], "'x' is not a port number"),
    ],
)
async def test_usage_errors_exit_64(argv: list[str], says: str) -> None:
    rc, out, err = await run_cli(*argv)
    assert rc == 64, (rc, err)
    assert says in err
    assert out == ""


# -------------------------------------------------------------------- reload


async def test_reload_with_a_relative_path_is_not_another_file(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    # Both the daemon and the CLI run in REPO; the path is relative to it.
    relative = Path(*[".."] * (len(REPO.parts) - 1), *path.parts[1:])
    assert not relative.is_absolute()
    d = await daemon_proc(relative).start()

    rc, out, err = await run_cli("reload", "-c", str(relative))
    assert rc == 0, out + err
    assert "reloaded its configuration" in out
    assert "note:" not in out

    # Really another file: both named in full.
    other = path.with_name("other.yaml")
    other.write_text(path.read_text())
    rc, out, err = await run_cli("reload", "-c", str(other))
    assert rc == 0, out + err
    assert f"note: the daemon reads {path.resolve()}, not {other.resolve()}" in out
    assert await d.stop() == 0


# ---------------------------------------------------------------- broken pipe


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_queue_list_into_a_closed_pipe_exits_quietly(
    ops_config: Callable[..., Path], extra: list[str]
) -> None:
    path = ops_config([{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}])
    # `sluice queue list | head -0`: the reader is gone before anything is written.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "relay.cli", "queue", "list", "-c", str(path), *extra],
            stdout=write_end,
            stderr=subprocess.PIPE,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == b""
    # What a Unix tool killed by SIGPIPE reports to the shell (128 + 13).
    assert proc.returncode == 141


def test_queue_list_into_head_through_a_shell(ops_config: Callable[..., Path]) -> None:
    path = ops_config([{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}])
    script = f'"{sys.executable}" -m relay.cli queue list -c "{path}" | head -n 0'
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, cwd=REPO, timeout=60, check=False
    )
    assert proc.returncode == 0
    assert proc.stderr == b""


# ------------------------------------------------ start-up line, pluralization


async def test_ready_line_counts_pending_and_counts_are_pluralized(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    spool = path.parent / "spool.sqlite3"
    d = await daemon_proc(path).start()
    assert "sluice ready: 0 recipients pending delivery" in d.output
    _, reply = await smtp_send(d.port, "a@example.org", ["one@example.net"], MSG % b"one")
    sent_qid = reply.rsplit(" ", 1)[-1]
    await upstream.wait_for(1)
    await eventually(lambda: _statuses(spool) == ["sent"])
    assert await d.stop() == 0

    # While it is down: two messages, three recipients, straight into the spool.
    for rcpts in (["b@example.net", "c@example.net"], ["d@example.net"]):
        rc, _out, err = await run_cli("sendmail", "-v", "-c", str(path), *rcpts, stdin=MSG % b"x")
        assert rc == 0 and "queued as" in err, err
    single_qid = re.search(r"queued as (\S+)", err)
    assert single_qid is not None

    # Restarted with its provider unreachable: all three stay pending.
    down = ops_config(
        [{"id": "down", "host": "127.0.0.1", "port": free_port(), "encryption": "none"}],
        name="down.yaml",
    )
    d2 = await daemon_proc(down).start()
    assert (
        "sluice ready: 3 recipients pending delivery (1 sent, kept for spool.keep_sent)"
        in d2.output
    ), d2.output

    rc, out, _ = await run_cli("check", "-c", str(path))
    assert rc == 0 and "(1 provider, enabled: up1)" in out
    rc, out, _ = await run_cli("queue", "show", sent_qid, "-c", str(path))
    assert rc == 0 and "<one@example.net> sent, 1 attempt, next" in out, out
    rc, out, _ = await run_cli("queue", "retry", single_qid.group(1), "-c", str(path))
    assert rc == 0 and f"{single_qid.group(1)}: 1 recipient due now" in out, out
    assert await asyncio.wait_for(d2.stop(), 30) == 0


# ---------------------------------------------------------------- file modes


async def test_spool_files_are_for_owner_and_group_only(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    tmp_path: Path,
) -> None:
    spool_dir = tmp_path / "state" / "sluice"
    path = ops_config([provider_for(upstream)], spool={"path": str(spool_dir / "spool.sqlite3")})
    names = ["spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm"]
    names += ["spool.sqlite3.lock", "spool.sqlite3-writelock"]
    # The usual umask, which leaves SQLite's own default (0644) world-readable.
    previous = os.umask(0o022)
    try:
        d = await daemon_proc(path).start()
    finally:
        os.umask(previous)
    await smtp_send(d.port, "a@example.org", ["b@example.net"], MSG % b"modes")
    await upstream.wait_for(1)
    modes = {n: oct(stat.S_IMODE((spool_dir / n).stat().st_mode)) for n in names}
    assert modes == dict.fromkeys(names, "0o640")
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o750
    assert await d.stop() == 0
    left = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in spool_dir.iterdir()}
    assert left and set(left.values()) == {"0o640"}, left
