"""The benchmark harness still works: one tiny run through its documented command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import require
from tests.pg import pg_bin

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS`` from the repository, to its end; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [0, 1])
def test_bench_run_counts_every_message_once(tmp_path: Path, workers: int) -> None:
    out = tmp_path / "report.json"
    proc = _bench(
        "run",
        "--messages",
        "50",
        "--sessions",
        "5",
        "--warmup",
        "5",
        "--timeout",
        "60",
        "--workers",
        str(workers),
        "--json",
        str(out),
        timeout=90,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["relay"] == "sluice"
    assert result["accepted"] == 50
    assert result["delivered"] == 50
    assert (result["lost"], result["duplicated"], result["unexpected"]) == (0, 0, 0)
    assert result["e2e_rate"] > 0 and result["accept_p99_ms"] > 0
    assert result["cpu_ms_per_msg"] > 0 and result["peak_rss_mb"] > 10
    if workers:  # the worker's memory is counted too
        assert result["peak_rss_mb"] > 60
    # The table names the relay and the scenario.
    assert "sluice" in proc.stdout and "2048B x5s n=50" in proc.stdout


def test_bench_run_with_a_connection_per_message(tmp_path: Path) -> None:
    """``--connection-per-message yes,no``: both modes, each in its own table row."""
    out = tmp_path / "report.json"
    proc = _bench(
        "run",
        "--messages",
        "30",
        "--sessions",
        "3",
        "--warmup",
        "3",
        "--timeout",
        "60",
        "--workers",
        "0",
        "--connection-per-message",
        "yes,no",
        "--json",
        str(out),
        timeout=120,
    )
    per_message, reused = json.loads(out.read_text())["results"]
    assert (per_message["per_message"], reused["per_message"]) == (True, False)
    for result in (per_message, reused):
        assert result["accepted"] == result["delivered"] == 30
        assert (result["lost"], result["duplicated"], result["unexpected"]) == (0, 0, 0)
    assert "2048B x3s conn/msg n=30" in proc.stdout and "2048B x3s n=30" in proc.stdout


def test_bench_run_with_tls_auth_clients(tmp_path: Path) -> None:
    """``--client tls-auth``: every connection does STARTTLS and AUTH; all of it delivered."""
    out = tmp_path / "report.json"
    proc = _bench(
        "run",
        *("--messages", "20", "--sessions", "2", "--warmup", "2", "--timeout", "60"),
        *("--workers", "0", "--connection-per-message", "--client", "tls-auth"),
        *("--json", str(out)),
        timeout=120,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["client"] == "tls-auth" and result["refused"] == 0, result["errors"]
    assert result["accepted"] == result["delivered"] == 20
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert "2048B x2s conn/msg tls+auth n=20" in proc.stdout


def test_bench_run_with_postfix_smtp_source(tmp_path: Path) -> None:
    """``--generator smtp-source``: untagged, so counted by the sink against what it sent."""
    require("smtp-source")
    out = tmp_path / "report.json"
    proc = _bench(
        "run",
        "--messages",
        "20",
        "--sessions",
        "2",
        "--warmup",
        "2",
        "--timeout",
        "60",
        "--workers",
        "0",
        "--connection-per-message",
        "--generator",
        "smtp-source",
        "--json",
        str(out),
        timeout=120,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["generator"] == "smtp-source" and result["per_message"]
    assert result["accepted"] == result["delivered"] == 20
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert "2048B x2s conn/msg smtp-source n=20" in proc.stdout


def test_bench_run_on_postgresql_beside_sqlite(tmp_path: Path) -> None:
    """``--spool sqlite,postgresql``: a private cluster, both stores in turn, statements counted."""
    pg_bin()  # fails under CI when PostgreSQL is missing, skips elsewhere
    out = tmp_path / "report.json"
    proc = _bench(
        "run",
        *("--messages", "30", "--sessions", "3", "--warmup", "3", "--timeout", "60"),
        *("--workers", "0", "--spool", "sqlite,postgresql", "--json", str(out)),
        timeout=180,
    )
    on_sqlite, on_pg = json.loads(out.read_text())["results"]
    assert (on_sqlite["relay"], on_sqlite["spool"]) == ("sluice", "sqlite")
    assert (on_pg["relay"], on_pg["spool"]) == ("sluice-pg", "postgresql")
    for result in (on_sqlite, on_pg):
        assert result["accepted"] == result["delivered"] == 30, result["errors"]
        assert (result["lost"], result["duplicated"], result["unexpected"]) == (0, 0, 0)
    # What the messages cost the server: its CPU, and the statements Sluice sent it,
    # counted by the server (pg_stat_statements) and by Sluice's side (each a round trip).
    assert on_pg["db_cpu_ms_per_msg"] > 0
    queries = {s["query"].split(" (")[0]: s["calls_per_msg"] for s in on_pg["statements"]}
    assert queries["INSERT INTO messages"] == 1.0, queries
    trips = {
        (t["connection"], t["query"].split(" (")[0]): t["per_msg"] for t in on_pg["round_trips"]
    }
    assert trips[("writer", "INSERT INTO messages")] == 1.0, trips
    assert any(query.endswith("COMMIT") for _who, query in trips), trips
    assert on_pg["round_trips_per_msg"] >= 5 and on_pg["statements_per_msg"] >= 5
    assert "sluice-pg/sluice" in proc.stdout and "round trips per message" in proc.stdout


async def test_each_message_on_its_own_connection(tmp_path: Path) -> None:
    """The generator's per-message mode really opens one connection per message."""
    from bench.loadgen import run_load
    from bench.procs import SinkProcess

    sink = await SinkProcess.start()
    try:
        result = await run_load(
            "127.0.0.1", sink.port, messages=7, size=512, sessions=2, per_message=True
        )
        stats = await sink.dump(tmp_path / "sink.json")
    finally:
        await sink.stop()
    assert len(result.sent) == 7 and not result.errors
    assert stats["connections"] == 7


async def test_sink_tally_detects_duplicates_and_losses(tmp_path: Path) -> None:
    """The harness can fail: the same tokens twice are duplicates, unsent ones lost."""
    from bench.loadgen import run_load
    from bench.procs import SinkProcess
    from bench.runner import tally

    sink = await SinkProcess.start()
    try:
        first = await run_load("127.0.0.1", sink.port, messages=6, size=512, sessions=2, run_id="t")
        again = await run_load("127.0.0.1", sink.port, messages=3, size=512, sessions=1, run_id="t")
        assert await sink.count() == 9
        dump = await sink.dump(tmp_path / "sink.json")
    finally:
        await sink.stop()
    assert len(first.sent) == 6 and len(again.sent) == 3
    assert tally(first, dump["tokens"], "t")["duplicated"] == 3
    # A message the relay said 250 for but the sink never saw is lost.
    first.sent["t-999"] = (0.0, 0.0)
    counts = tally(first, dump["tokens"], "t")
    assert counts["lost"] == 1 and len(counts["e2e"]) == 6


def test_bench_steps_times_each_step_of_a_message_and_names_the_processes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "steps.json"
    args = ["steps", "--messages", "30", "--warmup", "5", "--repeat", "1", "--json", str(out)]
    proc = _bench(*args, timeout=90)
    (report,) = json.loads(out.read_text())
    assert report["relay"] == "sluice" and report["messages"] == 30
    waits = report["p50_ms"]
    assert list(waits) == ["greeting", "ehlo", "mail", "rcpt", "data", "body", "quit"]
    assert all(0 < ms < 1000 for ms in waits.values()), waits
    # Every message went through the daemon and its accept worker (workers: auto).
    assert report["cpu_ms_per_msg_total"] > 0
    assert {"sluice daemon", "sluice worker"} <= set(report["cpu_ms_per_msg"]) or (
        set(report["cpu_ms_per_msg"]) == {"sluice daemon"}  # one CPU: no worker
    )
    assert "greeting" in proc.stdout and "sluice" in proc.stdout


def test_bench_memory_reports_each_process_and_compares_the_bytes(tmp_path: Path) -> None:
    """``python -m bench memory`` with a 3 MB message (two, one after the other)."""
    out = tmp_path / "memory.json"
    _bench(
        "memory",
        "--size",
        str(3 * 2**20),
        "--messages",
        "2",
        "--timeout",
        "60",
        "--json",
        str(out),
        timeout=180,
    )
    report = json.loads(out.read_text())
    assert report["byte_identical"] is True and report["messages"] == 2
    for when in ("before", "after_delivery", "settled"):
        for process in ("daemon", "worker"):
            figures = report[when][process]
            assert 0 < figures["rss_mb"] <= figures["peak_mb"], (when, process, figures)
