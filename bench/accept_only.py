"""``python -m bench accept-only``: Sluice's accept side alone, on ``compare-postfix``'s workloads.

The same generator (Postfix's ``smtp-source``) and workloads as ``compare-postfix``
(``bench.compare.WORKLOADS``), against ``sluice serve`` at its defaults, but with
delivery taken out: the provider is the Python sink in *held* mode, which accepts
the connections and never greets. The daemon fills its delivery slots with the
first messages, which then hang at the greeting, and claims nothing more; from
then on it only reads the accept worker's frames. The figure is the rate at which
``smtp-source`` gets its messages accepted (its whole run, every message ``250``),
and the relay's CPU per message.

It answers one question: how fast can Sluice accept, with delivery costing nothing?
Whatever ``compare-postfix`` measures end to end cannot be higher, so a target
above this figure is out of reach of any change on the delivery side. Before the
relay stops, the sink is told to greet, so that the held deliveries end and the
graceful stop does not wait ``delivery.shutdown_grace`` for them.

``--floor`` also runs, in turn with each Sluice run, ``bench.floor_server``: the
least SMTP that satisfies ``smtp-source``, in front of the same spool code. Its
figure is what the accept side could reach if its SMTP layer cost nothing.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.compare import Workload, chosen_workloads, run_workload, scenario, warm_up
from bench.loadgen import SMTP_SOURCE
from bench.procs import ROOT, SinkProcess, smtp_ready
from bench.procstat import cpu_seconds
from bench.runner import RELAYS

__all__ = ["accept_once", "floor_once", "main_async"]


async def accept_once(
    wl: Workload, *, messages: int, warmup: int, workers: str = "auto"
) -> dict[str, Any]:
    """One run: ``messages`` through ``smtp-source`` into Sluice while delivery is held."""
    sc = scenario(wl, messages=messages, workers=workers)
    with tempfile.TemporaryDirectory(prefix="bench-accept-only-") as tmp:
        sink = await SinkProcess.start(held=True)
        try:
            async with RELAYS["sluice"](sc, sink, Path(tmp)) as target:
                await smtp_ready(target.port)
                run = await _timed(target.port, wl, messages, warmup, target.cpu)
                #: what reached the sink meanwhile: 0 while it held every delivery
                delivered = await sink.count()
                await sink.command("start")  # the held deliveries end; the stop need not wait
        finally:
            await sink.stop()
    return {**run, "delivered_meanwhile": delivered}


async def floor_once(wl: Workload, *, messages: int, warmup: int) -> dict[str, Any]:
    """One run of the same load into ``bench.floor_server`` (on a fresh spool file)."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.floor_server",
            str(Path(tmp) / "spool.db"),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                line = (await proc.stdout.readline()).decode()
            if not line.startswith("listening "):
                raise RuntimeError(f"bench.floor_server did not start: {line!r}")
            port = int(line.split()[1])
            pid = proc.pid
            run = await _timed(port, wl, messages, warmup, lambda: cpu_seconds(pid))
        finally:
            if proc.returncode is None:
                proc.terminate()
            tail, _ = await proc.communicate()
    #: what its spool held at the end: the warm-up's messages and these
    stored = int(tail.split()[-1]) if tail.startswith(b"stored ") else -1
    return {**run, "stored": stored}


async def _timed(
    port: int, wl: Workload, messages: int, warmup: int, cpu: Callable[[], float]
) -> dict[str, Any]:
    """The warm-up, then ``messages`` of ``wl`` timed, with the server's CPU (``cpu()``) spent."""
    if warmup:
        await warm_up(port, wl, warmup)
    cpu0, t0 = cpu(), time.time()
    sent, load = await run_workload(port, wl, messages)
    seconds, spent = time.time() - t0, cpu() - cpu0
    return {
        "workload": wl.key,
        "label": wl.label,
        "sent": sent,
        "seconds": seconds,
        "rate": sent / max(1e-9, seconds),
        "cpu_ms_per_msg": spent / max(1, sent) * 1000,
        "errors": list(load.errors)[:5],
    }


def _progress(what: str, run: dict[str, Any]) -> None:
    print(
        f"# {what}: {run['rate']:.0f} msg/s accepted, {run['cpu_ms_per_msg']:.2f} ms CPU/msg"
        + (f", errors: {run['errors'][:2]}" if run["errors"] else ""),
        file=sys.stderr,
        flush=True,
    )


def _cells(runs: list[dict[str, Any]]) -> str:
    rates = ", ".join(f"{r['rate']:.0f}" for r in runs)
    rate = statistics.median(r["rate"] for r in runs)
    cpu = statistics.median(r["cpu_ms_per_msg"] for r in runs)
    return f"**{rate:.0f}** ({rates}) | {cpu:.2f}"


def render(rows: list[dict[str, Any]]) -> str:
    floor = any(row.get("floor") for row in rows)
    head = (
        "| workload (2 KB unless said) | Sluice accepts, delivery held: msg/s (runs) | CPU ms/msg |"
    )
    rule = "|---|---|---|"
    if floor:
        head += " floor (bench.floor_server): msg/s (runs) | CPU ms/msg |"
        rule += "---|---|"
    lines = [head, rule]
    for row in rows:
        line = f"| {row['label']} | {_cells(row['runs'])} |"
        if floor:
            line += f" {_cells(row['floor'])} |"
        lines.append(line)
    return "\n".join(lines)


async def main_async(
    *,
    workloads: list[str],
    messages: int,
    repeat: int,
    warmup: int,
    json_path: str | None,
    floor: bool = False,
) -> int:
    """Run each workload ``repeat`` times; 0 when every run sent all its messages."""
    if not await asyncio.to_thread(Path(SMTP_SOURCE).exists):
        print(f"bench: {SMTP_SOURCE} is missing (apt-get install postfix)", file=sys.stderr)
        return 69
    chosen = chosen_workloads(workloads)
    if chosen is None:
        return 64
    rows: list[dict[str, Any]] = []
    for wl in chosen:
        runs, floors = [], []
        for i in range(repeat):
            if floor:  # in turn with Sluice's runs, so that both see the same hour
                f = await floor_once(wl, messages=messages, warmup=warmup)
                _progress(f"floor, {wl.label} run {i + 1}/{repeat}", f)
                floors.append(f)
            r = await accept_once(wl, messages=messages, warmup=warmup)
            _progress(f"sluice, delivery held, {wl.label} run {i + 1}/{repeat}", r)
            runs.append(r)
        rows.append({"workload": wl.key, "label": wl.label, "runs": runs, "floor": floors})
    print(render(rows))
    if json_path:
        await asyncio.to_thread(Path(json_path).write_text, json.dumps(rows, indent=1))
    bad = any(
        r["errors"] or r["sent"] != messages for row in rows for r in [*row["runs"], *row["floor"]]
    )
    return 1 if bad else 0
