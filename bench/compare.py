"""``python -m bench compare-postfix``: issue #28's side-by-side, with Postfix's own tools.

The generator is Postfix's ``smtp-source`` (a new connection per message unless the
workload reuses them: ``-d``), the sink is Postfix's ``smtp-sink`` (C: it costs neither
relay CPU the other does not pay; ``--sink python`` uses ``bench/sink.py`` instead), and
the relays are Sluice at its defaults (durability on) and the bench's private Postfix.
For every workload the relays take turns, Postfix first (P, S, P, S, P, S), and the median
of the runs is compared. A run is timed from just before ``smtp-source`` starts (its first
connect) until the sink has counted the last message.

Why not ``bench run``: its generator is Python and pipelines, its sink is Python (every
connection a relay opens to it costs Python time on the same two cores), and it times
from the first MAIL. See RESULTS.md ("Why bench run said 1.12x").

Nothing lost or duplicated is checked per run: ``smtp-source`` tags nothing, so with
``smtp-sink`` it is what the sink counted against what was sent, counted again after a
settle time (a duplicate arrives after the count is reached); with the Python sink the
Message-Id of each of smtp-source's messages is counted too.

The accept latency (connect to the 250 after the final dot) is what ``smtp-source`` does
not report: a **probe** in this process opens a new connection every ``--probe-ms`` while
the run lasts, sends one 2 KB message (EHLO, no pipelining) and times it. Its messages are
counted with the others (so both relays carry the same small extra load); ``--probe-ms 0``
turns it off.

Also measured once per invocation, as the floor and the ceiling beside the ratios: the
median of a 2 KB write plus ``fdatasync`` in the directory the spools live in, and
``smtp-source`` straight into ``smtp-sink`` (no relay) from one client with a connection
per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import SMTP_SOURCE, LoadResult, run_smtp_source
from bench.postfix import postfix_available
from bench.procs import SinkProcess, smtp_ready
from bench.procstat import cpu_seconds
from bench.runner import RELAYS, Scenario, free_port, generator_cpu, percentile, wait_count

__all__ = [
    "WORKLOADS",
    "SmtpSink",
    "Workload",
    "chosen_workloads",
    "fsync_median_ms",
    "main_async",
    "run_workload",
    "scenario",
    "warm_up",
]

SMTP_SINK = "/usr/sbin/smtp-sink"
_MESG = re.compile(rb"mesg=(\d+)")


@dataclass(frozen=True)
class Workload:
    """One row of the issue's table."""

    key: str
    label: str
    sessions: int
    per_message: bool = True
    size: int = 2048


#: the issue's table, in its order; ``--workloads`` picks by key
WORKLOADS = [
    Workload("1", "1 client, new conn/msg", 1),
    Workload("10", "10 clients, new conn/msg", 10),
    Workload("50", "50 clients, new conn/msg", 50),
    Workload("10r", "10 clients, reused", 10, per_message=False),
    Workload("100k", "100 KB, 10 clients, new conn/msg", 10, size=100 * 1024),
]


def scenario(wl: Workload, *, messages: int, workers: str = "auto") -> Scenario:
    """``wl`` as the harness's scenario: ``messages`` from ``smtp-source``."""
    return Scenario(
        messages=messages,
        size=wl.size,
        sessions=wl.sessions,
        workers=workers,
        per_message=wl.per_message,
        generator="smtp-source",
    )


async def run_workload(
    port: int, wl: Workload, messages: int, *, time_limit: float = 600.0
) -> tuple[int, LoadResult]:
    """``messages`` of ``wl`` through ``smtp-source`` into the relay at ``port``."""
    return await run_smtp_source(
        "127.0.0.1",
        port,
        messages=messages,
        size=wl.size,
        sessions=wl.sessions,
        time_limit=time_limit,
        per_message=wl.per_message,
    )


async def warm_up(port: int, wl: Workload, messages: int) -> int:
    """``messages`` of ``wl`` into the relay at ``port`` before measuring; how many went."""
    sent, _load = await run_smtp_source(
        "127.0.0.1",
        port,
        messages=messages,
        size=wl.size,
        sessions=min(wl.sessions, messages),
        per_message=wl.per_message,
    )
    return sent


def chosen_workloads(keys: list[str]) -> list[Workload] | None:
    """The workloads ``--workloads`` names, in the table's order; None (said why) if unknown."""
    chosen = [w for w in WORKLOADS if w.key in keys]
    if len(chosen) != len(set(keys)):
        known = ", ".join(w.key for w in WORKLOADS)
        print(f"bench: --workloads takes a comma list of {known}", file=sys.stderr)
        return None
    return chosen


class SmtpSink:
    """Postfix's ``smtp-sink`` with its running counter (``-c``) read from a pipe.

    The counter line (``sess=N quit=N mesg=N``, ended by a CR) is written on every
    message and session end; a task drains the pipe every ``interval`` so that the
    sink never blocks on it, and keeps the last ``mesg`` figure.
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.messages = 0
        self._tail = b""
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._task = asyncio.create_task(self._drain(), name="smtp-sink-counter")

    @classmethod
    async def start(cls) -> SmtpSink:
        port = free_port()
        # -u: it refuses to run as root without a user to switch to.
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        proc = await asyncio.to_thread(
            subprocess.Popen,
            [SMTP_SINK, "-c", *user, "-m", "1000", f"127.0.0.1:{port}", "1024"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        sink = cls(proc, port)
        deadline = time.monotonic() + 10
        while True:
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    await sink.stop()
                    raise RuntimeError("smtp-sink did not start") from None
                await asyncio.sleep(0.01)
        return sink

    def poll(self) -> int:
        """Read what the counter wrote since the last call; the messages counted so far."""
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._tail = (self._tail + chunk)[-256:]
        found = _MESG.findall(self._tail)
        if found:
            self.messages = int(found[-1])
        return self.messages

    async def _drain(self) -> None:
        while self.proc.poll() is None:
            self.poll()
            await asyncio.sleep(0.02)

    async def count(self) -> int:
        return self.poll()

    async def duplicates(self) -> int | None:
        """Not known: smtp-sink keeps no message identity (the count tells instead)."""
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def connections(self) -> int | None:
        """Sessions so far (the counter's ``sess``), warm-up and probes included."""
        self.poll()
        found = re.findall(rb"sess=(\d+)", self._tail)
        return int(found[-1]) if found else None

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class PythonSink:
    """``bench/sink.py`` behind the same face as :class:`SmtpSink`."""

    def __init__(self, sink: SinkProcess, work: Path) -> None:
        self.sink = sink
        self.port = sink.port
        self.work = work

    @classmethod
    async def start(cls, work: Path) -> PythonSink:
        return cls(await SinkProcess.start(), work)

    @property
    def pid(self) -> int:
        return self.sink.proc.pid

    async def count(self) -> int:
        return await self.sink.count()

    async def duplicates(self) -> int | None:
        """Messages that arrived more than once (probe tokens and smtp-source's Message-Ids)."""
        dump = await self.sink.dump(self.work / "sink.json")
        tagged = sum(len(times) - 1 for times in dump["tokens"].values())
        return int(dump["untagged_duplicates"]) + tagged

    async def connections(self) -> int | None:
        """Connections the relay opened to the sink so far (warm-up included)."""
        dump = await self.sink.dump(self.work / "sink.json")
        return int(dump["connections"])

    async def stop(self) -> None:
        await self.sink.stop()


Sink = SmtpSink | PythonSink


async def _start_sink(kind: str, work: Path) -> Sink:
    return await SmtpSink.start() if kind == "smtp-sink" else await PythonSink.start(work)


def fsync_median_ms(directory: Path, *, writes: int = 500) -> float:
    """Median time of a 2 KB append plus ``fdatasync``: what one durable commit cannot beat."""
    path = directory / "fsync-probe"
    block = b"x" * 2048
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(writes):
            t = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


async def _ceiling(messages: int) -> float:
    """``smtp-source -s 1`` straight into ``smtp-sink``, a connection per message: msg/s."""
    sink = await SmtpSink.start()
    try:
        t0 = time.time()
        sent, load = await run_smtp_source(
            "127.0.0.1", sink.port, messages=messages, size=2048, sessions=1
        )
        if load.errors:
            raise RuntimeError(f"ceiling: {load.errors}")
        await wait_count(sink, sent, stall=10, limit=60, every=0.005)
        return sent / (time.time() - t0)
    finally:
        await sink.stop()


async def _probe_one(port: int, body: bytes) -> float:
    """One message on its own connection, every reply waited for: connect to the final 250."""
    t = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for command in (None, b"EHLO probe.bench", b"MAIL FROM:<probe@example.com>"):
            if command is not None:
                writer.write(command + b"\r\n")
            while (line := await reader.readline())[3:4] == b"-":
                pass
            if line[:1] != b"2":
                raise ConnectionError(f"probe: {line!r}")
        for command, want in ((b"RCPT TO:<sink@example.net>", b"2"), (b"DATA", b"3")):
            writer.write(command + b"\r\n")
            line = await reader.readline()
            if line[:1] != want:
                raise ConnectionError(f"probe: {line!r}")
        writer.write(body)
        line = await reader.readline()
        if line[:1] != b"2":
            raise ConnectionError(f"probe: {line!r}")
        done = time.perf_counter() - t
        writer.write(b"QUIT\r\n")
        await reader.readline()
        return done
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _probe(port: int, every: float, stop: asyncio.Event, out: list[float]) -> None:
    """A probe message every ``every`` seconds until ``stop``; latencies into ``out``."""
    body = (
        b"From: <probe@example.com>\r\nTo: <sink@example.net>\r\nSubject: probe\r\n\r\n"
        + b"x" * 76
        + b"\r\n"
    ) * 24 + b".\r\n"
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        out.append(await _probe_one(port, body))
        next_at += every
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


async def run_once(
    relay: str,
    wl: Workload,
    *,
    messages: int,
    warmup: int,
    sink_kind: str,
    probe_ms: float,
    workers: str = "auto",
    time_limit: float = 600.0,
) -> dict[str, Any]:
    """One run of one workload against ``relay``; its figures."""
    sc = scenario(wl, messages=messages, workers=workers)
    with tempfile.TemporaryDirectory(prefix=f"bench-compare-{relay}-") as tmp:
        work = Path(tmp)
        sink = await _start_sink(sink_kind, work)
        try:
            async with RELAYS[relay](sc, sink, work) as target:
                await smtp_ready(target.port)
                if warmup:
                    sent = await warm_up(target.port, wl, warmup)
                    await wait_count(sink, sent, stall=30, limit=120, every=0.005)
                base = await sink.count()
                conns0 = await sink.connections()
                target.sampler.start()
                cpu0 = target.cpu()
                sink_cpu0 = cpu_seconds(sink.pid)
                gen_cpu0 = generator_cpu()
                latencies: list[float] = []
                stop = asyncio.Event()
                t0 = time.time()
                probe = (
                    asyncio.create_task(_probe(target.port, probe_ms / 1000, stop, latencies))
                    if probe_ms > 0
                    else None
                )
                sent, load = await run_workload(target.port, wl, messages, time_limit=time_limit)
                stop.set()
                errors = list(load.errors)
                if probe is not None:
                    try:
                        await probe
                    except (OSError, ConnectionError) as exc:
                        errors.append(f"probe: {exc}")
                expected = sent + len(latencies)
                counted = await wait_count(
                    sink, base + expected, stall=30, limit=time_limit, every=0.005
                )
                t_end = time.time()
                cpu = target.cpu() - cpu0
                sink_cpu = cpu_seconds(sink.pid) - sink_cpu0
                gen_cpu = generator_cpu() - gen_cpu0
                await target.sampler.stop()
                # A duplicate would arrive after the count was reached: look again.
                await asyncio.sleep(0.5)
                settled = await sink.count()
                dup_ids = await sink.duplicates()
                conns1 = await sink.connections()
                warnings = target.warnings()
                peak_rss = max(target.sampler.peak, target.hwm())
                rss_poll = target.sampler.interval
        finally:
            await sink.stop()
    delivered = settled - base
    return {
        "relay": relay,
        "workload": wl.key,
        "label": wl.label,
        "sessions": wl.sessions,
        "per_message": wl.per_message,
        "size": wl.size,
        "sink": sink_kind,
        "sent": sent,
        "probes": len(latencies),
        "delivered": delivered,
        "lost": max(0, expected - (counted - base)),
        "duplicated": max(max(0, delivered - expected), dup_ids or 0),
        #: connections the relay opened to the sink during the run
        "sink_connections": None if conns0 is None or conns1 is None else conns1 - conns0,
        "errors": errors[:5],
        "relay_warnings": warnings[:5],
        "seconds": t_end - t0,
        "rate": expected / max(1e-9, t_end - t0),
        "cpu_ms_per_msg": cpu / max(1, expected) * 1000,
        #: the sink's own CPU per message: it shares the two cores with the relay
        "sink_cpu_ms_per_msg": sink_cpu / max(1, expected) * 1000,
        #: smtp-source's (reaped) and this process's (the probe, the counter's reads)
        "generator_cpu_ms_per_msg": gen_cpu / max(1, expected) * 1000,
        "accept_p50_ms": percentile(latencies, 0.5) * 1000,
        "accept_p99_ms": percentile(latencies, 0.99) * 1000,
        "peak_rss_mb": peak_rss / 2**20,
        #: how often the harness polled the relay's processes for RSS (on the same cores)
        "rss_poll_s": rss_poll,
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def render(report: dict[str, Any]) -> str:
    """The issue's table: per-run figures, medians, ratio, CPU and p99 of both relays."""
    lines = [
        f"fsync (2 KB write + fdatasync) median: {report['fsync_median_ms']:.3f} ms; "
        f"no-relay ceiling (smtp-source -s 1 -> smtp-sink, conn/msg): "
        f"{report['ceiling_msg_s']:.0f} msg/s",
        f"sink: {report['sink']}; messages per run: {report['messages']} "
        f"(+ probe every {report['probe_ms']:g} ms); relays taking turns P,S,...; "
        f"median of {report['repeat']}",
        "",
        "| workload | Sluice msg/s (runs) | Postfix msg/s (runs) | Sluice / Postfix "
        "(each pair) | CPU ms/msg S / P | acc p99 ms S / P | lost / dup |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        s, p = row["sluice"], row["postfix"]

        def runs(rs: list[dict[str, Any]]) -> str:
            return ", ".join(f"{r['rate']:.0f}" for r in rs)

        pairs = ", ".join(f"{a['rate'] / b['rate']:.2f}" for a, b in zip(s, p, strict=True))
        lines.append(
            f"| {row['label']} | **{_median(s, 'rate'):.0f}** ({runs(s)}) "
            f"| **{_median(p, 'rate'):.0f}** ({runs(p)}) | **{row['ratio']:.2f}x** ({pairs}) "
            f"| {_median(s, 'cpu_ms_per_msg'):.2f} / {_median(p, 'cpu_ms_per_msg'):.2f} "
            f"| {_fmt(_median(s, 'accept_p99_ms'))} / {_fmt(_median(p, 'accept_p99_ms'))} "
            f"| {sum(r['lost'] for r in s + p)} / {sum(r['duplicated'] for r in s + p)} |"
        )
    return "\n".join(lines)


def _fmt(ms: float) -> str:
    return "-" if ms != ms else f"{ms:.1f}"


async def main_async(
    *,
    workloads: list[str],
    messages: int,
    repeat: int,
    warmup: int,
    sink: str,
    probe_ms: float,
    workers: str,
    json_path: str | None,
    ceiling_messages: int = 2000,
) -> int:
    """Run the comparison; 0 when nothing was lost or duplicated, 1 otherwise."""
    for program in (SMTP_SOURCE, SMTP_SINK):
        if not await asyncio.to_thread(Path(program).exists):
            print(f"bench: {program} is missing (apt-get install postfix)", file=sys.stderr)
            return 69
    if not postfix_available() or shutil.which("postfix") is None:
        print("bench: postfix is not installed (apt-get install postfix)", file=sys.stderr)
        return 69
    chosen = chosen_workloads(workloads)
    if chosen is None:
        return 64
    with tempfile.TemporaryDirectory(prefix="bench-fsync-") as tmp:
        fsync_ms = await asyncio.to_thread(fsync_median_ms, Path(tmp))
    ceiling = await _ceiling(ceiling_messages)
    report: dict[str, Any] = {
        "sink": sink,
        "messages": messages,
        "repeat": repeat,
        "probe_ms": probe_ms,
        "fsync_median_ms": fsync_ms,
        "ceiling_msg_s": ceiling,
        "load_average": os.getloadavg(),
        "rows": [],
    }
    print(
        f"# fsync median {fsync_ms:.3f} ms; ceiling {ceiling:.0f} msg/s",
        file=sys.stderr,
        flush=True,
    )
    for wl in chosen:
        runs: dict[str, list[dict[str, Any]]] = {"sluice": [], "postfix": []}
        for i in range(repeat):
            for relay in ("postfix", "sluice"):  # taking turns, Postfix first
                r = await run_once(
                    relay,
                    wl,
                    messages=messages,
                    warmup=warmup,
                    sink_kind=sink,
                    probe_ms=probe_ms,
                    workers=workers,
                )
                r["load_average_1m"] = os.getloadavg()[0]
                print(
                    f"# {relay} {wl.label} run {i + 1}/{repeat}: {r['rate']:.0f} msg/s, "
                    f"{r['cpu_ms_per_msg']:.2f} ms CPU/msg, p99 {_fmt(r['accept_p99_ms'])} ms, "
                    f"lost {r['lost']}, dup {r['duplicated']}"
                    + (f", errors: {r['errors'][:2]}" if r["errors"] else ""),
                    file=sys.stderr,
                    flush=True,
                )
                runs[relay].append(r)
        ratio = _median(runs["sluice"], "rate") / _median(runs["postfix"], "rate")
        report["rows"].append({"workload": wl.key, "label": wl.label, "ratio": ratio, **runs})
    print(render(report))
    if json_path:
        await asyncio.to_thread(Path(json_path).write_text, json.dumps(report, indent=1))
    bad = any(
        r["lost"] or r["duplicated"] or r["errors"]
        for row in report["rows"]
        for r in row["sluice"] + row["postfix"]
    )
    return 1 if bad else 0
