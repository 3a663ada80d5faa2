"""Command line of the harness: ``python -m bench run``, ``compare-postfix``, ``scale``..."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.loadgen import SMTP_SOURCE
from bench.pg import PG_BIN, PgCluster, pg_available, private_cluster
from bench.postfix import postfix_available
from bench.runner import Scenario, median_of, run_scenario

__all__ = ["main"]

_COLUMNS = [
    ("e2e_rate", "e2e msg/s", "{:.0f}"),
    ("accept_rate", "accept msg/s", "{:.0f}"),
    ("accept_p50_ms", "acc p50 ms", "{:.1f}"),
    ("accept_p99_ms", "acc p99 ms", "{:.1f}"),
    ("e2e_p50_ms", "e2e p50 ms", "{:.1f}"),
    ("e2e_p99_ms", "e2e p99 ms", "{:.1f}"),
    ("cpu_ms_per_msg", "CPU ms/msg", "{:.2f}"),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}"),
    # PostgreSQL spool only (``--spool postgresql``): the server's CPU, and the
    # statements Sluice sent it, per message
    ("db_cpu_ms_per_msg", "db CPU ms/msg", "{:.2f}"),
    ("round_trips_per_msg", "trips/msg", "{:.1f}"),
    ("lost", "lost", "{}"),
    ("duplicated", "dup", "{}"),
]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _modes(text: str) -> list[bool]:
    """``--connection-per-message``: ``yes``, ``no`` or both (``yes,no``)."""
    out = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word not in ("yes", "no"):
            raise argparse.ArgumentTypeError(f"expected yes, no or yes,no, not {word!r}")
        out.append(word == "yes")
    return out


def _cell(fmt: str, value: Any) -> str:
    """A figure; ``-`` where it was not measured (smtp-source: latencies; SQLite: db CPU)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def _ratios(s: dict[str, Any], p: dict[str, Any]) -> list[str]:
    ratios = []
    for k, _l, _f in _COLUMNS:
        a, b = s.get(k), p.get(k)
        if k in ("lost", "duplicated") or not b or a is None or math.isnan(a / b):
            ratios.append("")
        else:
            ratios.append(f"{a / b:.2f}x")
    return ratios


def table(rows: list[dict[str, Any]]) -> str:
    head = ["scenario", "relay", *(label for _k, label, _f in _COLUMNS)]
    lines = [head]
    by_scenario: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], {})[r["relay"]] = r
    for name, relays in by_scenario.items():
        for relay, r in relays.items():
            lines.append([name, relay, *(_cell(fmt, r.get(k)) for k, _l, fmt in _COLUMNS)])
        for mine, theirs in (("sluice", "postfix"), ("sluice-pg", "sluice")):
            if mine in relays and theirs in relays:
                lines.append([name, f"{mine}/{theirs}", *_ratios(relays[mine], relays[theirs])])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in lines
    )


async def _run(args: argparse.Namespace) -> int:
    spools = [w.strip() for w in args.spool.split(",") if w.strip()]
    if not spools or set(spools) - {"sqlite", "postgresql"}:
        print("bench: --spool takes sqlite, postgresql or sqlite,postgresql", file=sys.stderr)
        return 64
    relays = [{"sqlite": "sluice", "postgresql": "sluice-pg"}[s] for s in spools]
    if "postgresql" in spools and not pg_available():
        print(f"bench: PostgreSQL is not installed ({PG_BIN}/initdb)", file=sys.stderr)
        return 69
    if args.compare == "postfix":
        if not postfix_available():
            print("bench: postfix is not installed (apt-get install postfix)", file=sys.stderr)
            return 69
        relays.append("postfix")
    if args.generator == "smtp-source" and not await asyncio.to_thread(Path(SMTP_SOURCE).exists):
        print(f"bench: {SMTP_SOURCE} is missing (apt-get install postfix)", file=sys.stderr)
        return 69
    clients = args.client.split(",")
    if set(clients) - {"plain", "tls-auth"}:
        print("bench: --client takes plain, tls-auth or plain,tls-auth", file=sys.stderr)
        return 64
    if "tls-auth" in clients and (args.compare or args.generator == "smtp-source"):
        print(
            "bench: --client tls-auth runs Sluice alone, with the built-in generator",
            file=sys.stderr,
        )
        return 64
    async with contextlib.AsyncExitStack() as stack:
        # One private cluster for the whole command; each run has its own database.
        pg = await stack.enter_async_context(private_cluster()) if "sluice-pg" in relays else None
        rows = await _scenarios(args, relays, clients, pg)
    print(table(rows))
    for r in rows:
        if r.get("round_trips"):
            print(f"\n{r['relay']} {r['scenario']} (run 1): round trips per message")
            for trip in r["round_trips"]:
                if trip["per_msg"] >= 0.01:
                    print(
                        f"  {trip['per_msg']:7.3f}  {trip['connection']:6}  {trip['query'][:100]}"
                    )
    if args.json:
        text = json.dumps({"results": rows}, indent=1)
        await asyncio.to_thread(Path(args.json).write_text, text)
    bad = any(r["lost"] or r["duplicated"] or r["unexpected"] for r in rows)
    return 1 if bad else 0


async def _scenarios(
    args: argparse.Namespace, relays: list[str], clients: list[str], pg: PgCluster | None
) -> list[dict[str, Any]]:
    """Every combination of the command's lists, each relay's runs taking turns."""
    rows: list[dict[str, Any]] = []
    combos = [
        (size, sessions, per_message, client)
        for size in _ints(args.size)
        for sessions in _ints(args.sessions)
        for per_message in args.connection_per_message
        for client in clients
    ]
    for size, sessions, per_message, client in combos:
        sc = Scenario(
            messages=args.messages,
            size=size,
            sessions=sessions,
            connections=args.connections,
            workers=args.workers,
            warmup=args.warmup,
            time_limit=args.timeout,
            per_message=per_message,
            generator=args.generator,
            client=client,
        )
        # Relays take turns run by run, so that a machine getting slower or
        # faster during the scenario (shared hosts do) biases neither.
        runs: dict[str, list[dict[str, Any]]] = {relay: [] for relay in relays}
        for i in range(args.repeat):
            for relay in relays:
                r = await run_scenario(relay, sc, pg=pg if relay == "sluice-pg" else None)
                print(
                    f"# {relay} {sc.name} run {i + 1}/{args.repeat}: "
                    f"{r['e2e_rate']:.0f} msg/s e2e, lost {r['lost']}, dup {r['duplicated']}"
                    + (f", errors: {r['errors'][:2]}" if r["errors"] else ""),
                    file=sys.stderr,
                    flush=True,
                )
                runs[relay].append(r)
        rows.extend(median_of(runs[relay]) for relay in relays)
    return rows


async def _compare(args: argparse.Namespace) -> int:
    from bench.compare import main_async

    return await main_async(
        workloads=[w.strip() for w in args.workloads.split(",") if w.strip()],
        messages=args.messages,
        repeat=args.repeat,
        warmup=args.warmup,
        sink=args.sink,
        probe_ms=args.probe_ms,
        workers=args.workers,
        json_path=args.json,
    )


async def _accept_only(args: argparse.Namespace) -> int:
    from bench.accept_only import main_async

    return await main_async(
        workloads=[w.strip() for w in args.workloads.split(",") if w.strip()],
        messages=args.messages,
        repeat=args.repeat,
        warmup=args.warmup,
        json_path=args.json,
        floor=args.floor,
    )


async def _scale(args: argparse.Namespace) -> int:
    from bench.scale import run_scale

    report = await run_scale(
        messages=args.messages, size=args.size, sessions=args.sessions, workers=args.workers
    )
    print(json.dumps({k: v for k, v in report.items() if k != "rss_curve"}, indent=1))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=1))
    return 1 if report["lost"] or report["duplicated"] else 0


async def _steps(args: argparse.Namespace) -> int:
    from bench.steps import STEPS, run_steps

    relays = ["sluice", *([args.compare] if args.compare else [])]
    if args.compare and not postfix_available():
        print("postfix is not installed", file=sys.stderr)
        return 2
    reports = []
    for i in range(args.repeat):
        for relay in relays:  # taking turns
            report = await run_steps(
                relay, messages=args.messages, warmup=args.warmup, size=args.size
            )
            print(f"# {relay} run {i + 1}/{args.repeat}: {report['rate']:.0f} msg/s", flush=True)
            reports.append(report)
    head = ["relay", "msg/s", *STEPS, "cycle", "CPU ms/msg"]
    lines = [head]
    for relay in relays:
        mine = [r for r in reports if r["relay"] == relay]
        med = sorted(mine, key=lambda r: float(r["rate"]))[(len(mine) - 1) // 2]  # median run
        lines.append(
            [relay, f"{med['rate']:.0f}"]
            + [f"{med['p50_ms'][s]:.3f}" for s in STEPS]
            + [f"{med['cycle_ms']:.3f}", f"{med['cpu_ms_per_msg_total']:.2f}"]
        )
        parts = ", ".join(f"{k} {v:.2f}" for k, v in med["cpu_ms_per_msg"].items())
        lines.append([f"  ({parts})"])
    for line in lines:
        print("  ".join(line))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(reports, indent=1))
    return 0


async def _memory(args: argparse.Namespace) -> int:
    from bench.memory import run_memory

    report = await run_memory(size=args.size, messages=args.messages, within=args.timeout)
    print(json.dumps(report, indent=1))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=1))
    return 0 if report["byte_identical"] else 1


async def _dkim(args: argparse.Namespace) -> int:
    from bench.dkim import run_dkim

    report = await run_dkim(messages=args.messages)
    print(json.dumps(report, indent=1))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(report, indent=1))
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="throughput and latency, optionally side by side with Postfix")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--size", default="2048", help="message size in bytes; a comma list runs each")
    p.add_argument("--sessions", default="10", help="client sessions; a comma list runs each")
    p.add_argument("--repeat", type=int, default=1, help="runs per scenario; the median is shown")
    p.add_argument("--connections", type=int, default=20, help="relay -> sink connections")
    p.add_argument("--workers", default="auto", help="Sluice's smtp.workers (auto, 0, 1...)")
    p.add_argument("--warmup", type=int, default=100, help="messages sent before measuring")
    p.add_argument("--timeout", type=float, default=600.0, help="limit for one run, seconds")
    p.add_argument(
        "--connection-per-message",
        type=_modes,
        nargs="?",
        const=[True],
        default=[False],
        metavar="yes|no|yes,no",
        help="a new connection (EHLO ... QUIT) per message; 'yes,no' runs both",
    )
    p.add_argument(
        "--generator",
        choices=["builtin", "smtp-source"],
        default="builtin",
        help="smtp-source: Postfix's own generator (untagged: lost/dup from counts only)",
    )
    p.add_argument(
        "--client",
        default="plain",
        metavar="plain|tls-auth|plain,tls-auth",
        help="tls-auth: every connection does STARTTLS and AUTH PLAIN (a submission client)",
    )
    p.add_argument("--compare", choices=["postfix"])
    p.add_argument(
        "--spool",
        default="sqlite",
        metavar="sqlite|postgresql|sqlite,postgresql",
        help="Sluice's store; postgresql starts a private cluster (a database per run)",
    )
    p.add_argument("--json", help="write every figure to this file")
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "compare-postfix",
        help="issue #28's table: smtp-source -> Sluice or Postfix -> smtp-sink, taking turns",
    )
    p.add_argument(
        "--workloads",
        default="1,10,50,10r,100k",
        help="comma list: 1, 10, 50 (clients, new conn/msg), 10r (reused), 100k (100 KB x10)",
    )
    p.add_argument("--messages", type=int, default=3000, help="smtp-source messages per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per relay; the median is compared")
    p.add_argument("--warmup", type=int, default=100, help="messages sent before measuring")
    p.add_argument("--sink", choices=["smtp-sink", "python"], default="smtp-sink")
    p.add_argument(
        "--probe-ms",
        type=float,
        default=20.0,
        help="accept latency probe: one message on its own connection this often (0: off)",
    )
    p.add_argument("--workers", default="auto", help="Sluice's smtp.workers (auto, 0, 1...)")
    p.add_argument("--json", help="write every run's figures to this file")
    p.set_defaults(func=_compare)
    p = sub.add_parser(
        "accept-only",
        help="compare-postfix's workloads into Sluice with delivery held: its accept side alone",
    )
    p.add_argument("--workloads", default="1,10,50,10r,100k", help="as compare-postfix's")
    p.add_argument("--messages", type=int, default=3000, help="smtp-source messages per run")
    p.add_argument("--repeat", type=int, default=3, help="runs per workload; the median is shown")
    p.add_argument("--warmup", type=int, default=100, help="messages sent before measuring")
    p.add_argument(
        "--floor",
        action="store_true",
        help="also run bench.floor_server (the least SMTP, same spool) in turn with Sluice",
    )
    p.add_argument("--json", help="write every run's figures to this file")
    p.set_defaults(func=_accept_only)
    p = sub.add_parser("scale", help="100k queued against a stopped upstream, restart, drain")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--workers", default="auto", help="Sluice's smtp.workers (auto, 0, 1...)")
    p.add_argument("--json")
    p.set_defaults(func=_scale)
    p = sub.add_parser("steps", help="one client, a connection per message: the wait of each step")
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--repeat", type=int, default=3, help="runs per relay; the median run is shown")
    p.add_argument("--compare", choices=["postfix"])
    p.add_argument("--json")
    p.set_defaults(func=_steps)
    p = sub.add_parser("memory", help="one large message through Sluice: peak RSS of each process")
    p.add_argument("--size", type=int, default=25 * 2**20, help="message size in bytes")
    p.add_argument("--messages", type=int, default=1, help="sent one after another")
    p.add_argument("--timeout", type=float, default=300.0, help="limit for each wait, seconds")
    p.add_argument("--json")
    p.set_defaults(func=_memory)
    p = sub.add_parser("dkim", help="DKIM signing: cost per message, longest event-loop stall")
    p.add_argument("--messages", type=int, default=50, help="messages per case")
    p.add_argument("--json")
    p.set_defaults(func=_dkim)
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(args.func(args)))
