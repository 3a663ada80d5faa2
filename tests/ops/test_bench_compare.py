"""``python -m bench compare-postfix`` (issue #28) keeps working: its smallest form, both relays.

smtp-source -> Sluice and the bench's private Postfix, taking turns -> smtp-sink, a few
hundred messages; the figures the issue's table needs are in the JSON, nothing lost or
duplicated. And the pieces that decide "lost" and "duplicated" can say so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import require

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the repository, to its end; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def test_compare_postfix_smallest_form_runs_both_relays_and_counts_every_message(
    tmp_path: Path,
) -> None:
    for program in ("smtp-source", "smtp-sink", "postfix"):
        require(program)
    if os.geteuid() != 0:
        pytest.skip("the bench's private Postfix runs its master as root")
    out = tmp_path / "compare.json"
    proc = _bench(
        "compare-postfix",
        *("--workloads", "10", "--messages", "200", "--repeat", "1", "--warmup", "10"),
        *("--json", str(out)),
    )
    report = json.loads(out.read_text())
    assert report["sink"] == "smtp-sink"
    assert 0 < report["fsync_median_ms"] < 1000
    assert report["ceiling_msg_s"] > 0
    (row,) = report["rows"]
    assert row["workload"] == "10" and row["ratio"] > 0
    for relay in ("sluice", "postfix"):
        (run,) = row[relay]
        assert run["relay"] == relay and run["sent"] == 200 and not run["errors"], run
        assert run["probes"] > 0, run  # the latency probe ran alongside, and was delivered
        assert run["delivered"] == run["sent"] + run["probes"], run
        assert (run["lost"], run["duplicated"]) == (0, 0), run
        assert run["rate"] > 0 and run["cpu_ms_per_msg"] > 0 and run["accept_p99_ms"] > 0
        # What the sink cost, and how many connections the relay opened to it.
        assert run["sink_cpu_ms_per_msg"] >= 0 and run["sink_connections"] is not None
        assert run["generator_cpu_ms_per_msg"] > 0  # smtp-source's, reaped, and the probe's
    # The harness's RSS poll runs on the relays' cores: as often beside either relay (it
    # was every 50 ms beside Sluice and 200 ms beside Postfix: 26 ms of CPU a second more).
    assert row["sluice"][0]["rss_poll_s"] == row["postfix"][0]["rss_poll_s"]
    # The table, with the per-run figures and the machine's floor and ceiling.
    assert "| 10 clients, new conn/msg |" in proc.stdout
    assert "Sluice / Postfix" in proc.stdout and "fdatasync" in proc.stdout
    assert "(each pair)" in proc.stdout


async def test_the_sinks_count_what_smtp_source_sent_and_see_a_message_twice(
    tmp_path: Path,
) -> None:
    """smtp-sink's counter reaches what was sent; the Python sink tells a repeat by Message-Id."""
    from bench.compare import PythonSink, SmtpSink
    from bench.loadgen import run_smtp_source
    from bench.procs import SinkProcess

    require("smtp-source")
    require("smtp-sink")
    sink = await SmtpSink.start()
    try:
        sent, load = await run_smtp_source("127.0.0.1", sink.port, messages=7, size=300, sessions=2)
        assert sent == 7 and not load.errors
        for _ in range(500):  # the counter is read every 20 ms: poll with a deadline
            if await sink.count() >= 7:
                break
            await asyncio.sleep(0.01)
        assert await sink.count() == 7
    finally:
        await sink.stop()

    python = PythonSink(await SinkProcess.start(), tmp_path)
    try:
        sent, load = await run_smtp_source(
            "127.0.0.1", python.port, messages=5, size=300, sessions=2
        )
        assert sent == 5 and await python.count() == 5
        assert await python.duplicates() == 0
        # The same message again (same Message-Id): a duplicate.
        reader, writer = await asyncio.open_connection("127.0.0.1", python.port)
        message = b"From: <a@b.example>\r\nMessage-Id: <1.2.3@vm>\r\n\r\nhi\r\n.\r\n"
        for _ in range(2):
            writer.write(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
            writer.write(message)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        while await reader.readline():
            pass
        writer.close()
        assert await python.count() == 7
        assert await python.duplicates() == 1
    finally:
        await python.stop()


def test_accept_only_smallest_form_accepts_every_message_while_delivery_is_held(
    tmp_path: Path,
) -> None:
    """``python -m bench accept-only``: the accept side alone, on compare-postfix's workloads.

    With ``--floor``, the least SMTP in front of the same spool code runs in turn with it,
    and commits every message it answers ``250`` to (its spool holds them at the end).
    """
    require("smtp-source")
    out = tmp_path / "accept.json"
    proc = _bench(
        "accept-only",
        *("--workloads", "1,10r", "--messages", "150", "--repeat", "1", "--warmup", "10"),
        *("--floor", "--json", str(out)),
    )
    rows = json.loads(out.read_text())
    assert [row["workload"] for row in rows] == ["1", "10r"]
    for row in rows:
        (run,) = row["runs"]
        assert run["sent"] == 150 and not run["errors"], run
        assert run["rate"] > 0 and run["cpu_ms_per_msg"] > 0, run
        # Delivery took no part: the held sink greeted nobody, so nothing reached it.
        assert run["delivered_meanwhile"] == 0, run
        (floor,) = row["floor"]
        assert floor["sent"] == 150 and not floor["errors"], floor
        assert floor["stored"] == 150 + 10, floor  # the warm-up's and the run's, committed
        assert floor["rate"] > 0 and floor["cpu_ms_per_msg"] > 0, floor
    assert "| 10 clients, reused |" in proc.stdout
    assert "floor (bench.floor_server)" in proc.stdout
