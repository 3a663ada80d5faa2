"""The scale run: a big queue against a stopped upstream, a restart, then the drain.

1. The sink starts *held* (it accepts connections and withholds its greeting),
   so Sluice's few delivery sessions wait in connect and everything else stays
   queued: an upstream that is down, without a retry back-off in the way.
2. ``messages`` messages are queued; RSS is sampled as the queue grows.
3. With the queue full: ``sluice queue list`` and the admin pages are timed.
4. Sluice is stopped (SIGTERM) and started again; the time from spawn until it
   answers EHLO is the start-up time.
5. The sink is released; the drain is timed and RSS sampled until the sink has
   counted every message; lost and duplicated messages are tallied.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import LoadResult, run_load
from bench.procs import ROOT, SinkProcess, SluiceProcess, smtp_ready, write_sluice_config
from bench.procstat import Sampler, descendants, tree_cpu_seconds, tree_rss_bytes
from bench.runner import percentile, tally

__all__ = ["run_scale"]

_MB = 2**20


def _size_mb(directory: Path, pattern: str) -> float:
    return sum(p.stat().st_size for p in directory.glob(pattern)) / _MB


async def _time_cli(cfg: Path, *args: str) -> float:
    """Wall time of one ``sluice`` command (a fresh interpreter, as a user runs it)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        *args,
        "-c",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode != 0:
        raise RuntimeError(f"sluice {' '.join(args)} failed: {err.decode()}")
    return time.monotonic() - started


async def _time_admin(port: int) -> dict[str, float]:
    """Median of three GETs of each admin page that reads the queue, in ms."""
    import httpx

    timings: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for path in ("/queue", "/api/queue", "/"):
            runs = []
            for _ in range(3):
                started = time.monotonic()
                response = await client.get(path)
                runs.append(time.monotonic() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"admin {path}: HTTP {response.status_code}")
            timings[path] = statistics.median(runs) * 1000
    return timings


async def _admin_port(proc: SluiceProcess, within: float = 20.0) -> int:
    deadline = time.monotonic() + within
    while not proc.admin_port:
        if time.monotonic() > deadline or proc.proc.returncode is not None:
            return 0
        await asyncio.sleep(0.02)
    return proc.admin_port


async def _queue_timings(cfg: Path, proc: SluiceProcess) -> dict[str, Any]:
    cli = [await _time_cli(cfg, "queue", "list", "--limit", "100") for _ in range(3)]
    out: dict[str, Any] = {"queue_list_ms": statistics.median(cli) * 1000}
    port = await _admin_port(proc)
    if port:
        out["admin_ms"] = await _time_admin(port)
    else:
        out["admin_ms"] = "skipped: the admin server did not start"
    return out


async def run_scale(
    *,
    messages: int = 100_000,
    size: int = 2048,
    sessions: int = 10,
    workers: str = "auto",
    time_limit: float = 1800.0,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "messages": messages,
        "size": size,
        "sessions": sessions,
        "workers": workers,
    }
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        cfg = work / "sluice.yaml"
        sink = await SinkProcess.start(held=True)
        try:
            write_sluice_config(
                cfg,
                sink_port=sink.port,
                spool=work / "spool.sqlite3",
                workers=workers,
                # Held sessions wait in connect; at stop they are released at once.
                extra_delivery={"connect_timeout": "2h", "shutdown_grace": "1s"},
                admin=True,
            )
            sluice = await SluiceProcess.start(cfg)
            try:
                await smtp_ready(sluice.port)
                load = LoadResult()
                curve: list[tuple[int, float]] = []
                sampler = Sampler(lambda: descendants(sluice.pid), interval=0.5)
                sampler.start()
                task = asyncio.create_task(
                    run_load(
                        "127.0.0.1",
                        sluice.port,
                        messages=messages,
                        size=size,
                        sessions=sessions,
                        time_limit=time_limit,
                        run_id="scale",
                        result=load,
                    )
                )
                step = max(1, messages // 10)
                while not task.done():
                    await asyncio.wait({task}, timeout=0.5)
                    if len(load.sent) >= (len(curve) + 1) * step:
                        curve.append((len(load.sent), tree_rss_bytes(sluice.pid) / _MB))
                await task
                await sampler.stop()
                queued_for = load.finished - load.started
                report["queue"] = {
                    "accepted": len(load.sent),
                    "refused": len(load.errors),
                    #: what the client was told (or what broke) for the first of them
                    "refusals": [str(e) for e in load.errors[:5]],
                    #: the relay's own warnings and errors meanwhile (why it refused)
                    "relay_warnings": list(sluice.warnings)[:10],
                    "accept_rate": len(load.sent) / max(1e-9, queued_for),
                    "accept_p99_ms": percentile(load.accept_latencies, 0.99) * 1000,
                    "rss_mb_by_queued": curve,
                    "rss_mb_queued": tree_rss_bytes(sluice.pid) / _MB,
                    "peak_rss_mb": tree_rss_bytes(sluice.pid, "VmHWM") / _MB,
                    "spool_mb": await asyncio.to_thread(_size_mb, work, "spool.sqlite3*"),
                }
                report["queue"].update(await _queue_timings(cfg, sluice))
                report["stop_seconds"] = await sluice.stop()
            except BaseException:
                await sluice.stop()
                raise

            started = time.monotonic()
            sluice = await SluiceProcess.start(cfg)
            try:
                t_listening = time.monotonic() - started
                await smtp_ready(sluice.port)
                report["restart"] = {
                    "listening_seconds": t_listening,
                    "accepting_smtp_seconds": time.monotonic() - started,
                }
                report["restart"].update(await _queue_timings(cfg, sluice))
                sampler = Sampler(lambda: descendants(sluice.pid), interval=0.5)
                sampler.start()
                cpu0 = tree_cpu_seconds(sluice.pid)
                base = await sink.count()
                t0 = time.monotonic()
                await sink.command("start")
                deadline = t0 + time_limit
                while (n := await sink.count()) < base + len(load.sent):
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                drained = time.monotonic() - t0
                await sampler.stop()
                report["drain"] = {
                    "delivered": n - base,
                    "seconds": drained,
                    "rate": (n - base) / max(1e-9, drained),
                    "cpu_ms_per_msg": (tree_cpu_seconds(sluice.pid) - cpu0) / max(1, n) * 1000,
                    "peak_rss_mb": sampler.peak / _MB,
                    "rss_mb_end": sampler.last / _MB,
                }
                dump = await sink.dump(work / "sink.json")
            finally:
                await sluice.stop()
        finally:
            await sink.stop()
    counts = tally(load, dump["tokens"], "scale")
    report["lost"] = counts["lost"]
    report["duplicated"] = counts["duplicated"]
    report["peak_rss_mb"] = max(report["queue"]["peak_rss_mb"], report["drain"]["peak_rss_mb"])
    return report
