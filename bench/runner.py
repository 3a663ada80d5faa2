"""One benchmark scenario against Sluice or a private Postfix, and its figures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import secrets
import socket
import sqlite3
import ssl
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench.loadgen import ClientAuth, LoadResult, run_load, run_smtp_source
from bench.pg import PgCluster, PgSpool
from bench.postfix import PostfixInstance
from bench.procs import SinkProcess, SluiceProcess, smtp_ready, write_sluice_config
from bench.procstat import Sampler, cpu_seconds, descendants, tree_cpu_seconds, tree_rss_bytes

__all__ = [
    "RELAYS",
    "Counting",
    "Scenario",
    "Target",
    "free_port",
    "generator_cpu",
    "run_scenario",
    "tally",
    "wait_count",
]


#: how often a relay's processes are polled for their RSS, the same for both relays: the
#: poll runs on the two cores the relay under test uses. (Sluice's used to be polled every
#: 50 ms and Postfix's every 200 ms: 26 ms of CPU a second more beside Sluice, measured.)
_SAMPLE_EVERY = 0.2


@dataclass(frozen=True)
class Scenario:
    messages: int
    size: int
    sessions: int
    connections: int = 20
    #: Sluice's ``smtp.workers`` (accept worker processes): "auto", "0", "1"...
    workers: str = "auto"
    warmup: int = 100
    time_limit: float = 600.0
    #: a new connection (greeting, EHLO, QUIT) for every message
    per_message: bool = False
    #: "builtin" (bench/loadgen.py, tagged) or "smtp-source" (Postfix's, untagged)
    generator: str = "builtin"
    #: "plain" (loopback, no TLS or AUTH) or "tls-auth" (STARTTLS and AUTH PLAIN per connection)
    client: str = "plain"

    @property
    def name(self) -> str:
        """``2048B x10s`` (connections reused) or ``2048B x10s conn/msg``, and ``n=``."""
        mode = " conn/msg" if self.per_message else ""
        gen = " smtp-source" if self.generator == "smtp-source" else ""
        auth = " tls+auth" if self.client == "tls-auth" else ""
        return f"{self.size}B x{self.sessions}s{mode}{gen}{auth} n={self.messages}"


@dataclass
class Target:
    """What the runner needs from the relay under test."""

    name: str
    port: int
    cpu: Callable[[], float]
    sampler: Sampler
    hwm: Callable[[], int]
    #: the relay's own log lines at WARNING or above (Sluice only)
    warnings: Callable[[], list[str]] = list
    #: where undelivered mail is, when some is missing (Sluice only)
    diagnose: Callable[[], list[Any]] = list
    #: STARTTLS and AUTH for every connection (``--client tls-auth``)
    auth: ClientAuth | None = None
    #: the run's PostgreSQL database (``--spool postgresql``): its server's CPU, statements
    store: PgSpool | None = None


class HasPort(Protocol):
    """A sink as the relays need it: where to deliver (Python's or Postfix's smtp-sink)."""

    @property
    def port(self) -> int: ...


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def tally(load: LoadResult, tokens: dict[str, list[float]], run: str) -> dict[str, Any]:
    """Lost, duplicated and end-to-end latencies of one run's tokens."""
    mine = {t: ts for t, ts in tokens.items() if t.startswith(run + "-")}
    lost = [t for t in load.sent if t not in mine]
    dup = sum(len(ts) - 1 for ts in mine.values() if len(ts) > 1)
    unexpected = [t for t in mine if t not in load.sent]
    e2e = [mine[t][0] - start for t, (start, _done) in load.sent.items() if t in mine]
    return {"lost": len(lost), "duplicated": dup, "unexpected": len(unexpected), "e2e": e2e}


def _unsent(spool: Path) -> list[Any]:
    """Recipients not sent, by state, from the spool (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{spool}?mode=ro", uri=True)) as db:
        return db.execute(
            "SELECT status, count(*), max(attempts), min(next_attempt_at) - :now,"
            " max(last_reply) FROM recipients WHERE status != 'sent' GROUP BY status",
            {"now": time.time()},
        ).fetchall()


def generator_cpu() -> float:
    """CPU seconds of this process and its reaped children (smtp-source, once it exited).

    The built-in generator runs in this process, smtp-source in a child: either way
    it takes its share of the two cores the relays run on.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def free_port() -> int:
    """A loopback port nothing listens on now (for Postfix, which cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def _sluice(
    sc: Scenario, sink: HasPort, work: Path, pg: PgCluster | None = None
) -> AsyncIterator[Target]:
    cfg = work / "sluice.yaml"
    auth, smtp_lines = _tls_auth(work) if sc.client == "tls-auth" else (None, None)
    # On PostgreSQL, a fresh database of the bench's private cluster per run.
    store = (
        None
        if pg is None
        else PgSpool(pg, await asyncio.to_thread(pg.new_database), work / "pg-counts")
    )
    write_sluice_config(
        cfg,
        sink_port=sink.port,
        spool=work / "spool.sqlite3",
        connections=sc.connections,
        workers=sc.workers,
        smtp_lines=smtp_lines,
        spool_url=None if store is None else store.url,
    )
    proc = await SluiceProcess.start(cfg, env=None if store is None else store.env())
    try:
        # The daemon and its accept workers, if any; polled as often as Postfix's tree
        # (``_SAMPLE_EVERY``). Sluice's peak is its ``VmHWM`` anyway; the poll is
        # a fallback, and each one scans /proc (about 2 ms of CPU on these cores).
        sampler = Sampler(lambda: descendants(proc.pid), interval=_SAMPLE_EVERY)
        yield Target(
            "sluice",
            proc.port,
            lambda: tree_cpu_seconds(proc.pid),
            sampler,
            lambda: tree_rss_bytes(proc.pid, "VmHWM"),
            lambda: list(proc.warnings),
            store.unsent if store is not None else lambda: _unsent(work / "spool.sqlite3"),
            auth,
            store,
        )
    finally:
        await proc.stop()


def _tls_auth(work: Path) -> tuple[ClientAuth, list[str]]:
    """A STARTTLS listener with AUTH required, its certificate, one user, and the client side.

    The certificate (ECDSA P-256, trustme's) and the user's argon2 hash (argon2-cffi's
    defaults, as ``sluice admin hash-password`` makes) are what an operator would use.
    """
    import trustme
    from argon2 import PasswordHasher

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(work / "smtp.pem"))
    password = secrets.token_urlsafe(16)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    lines = [
        "  listen:",
        '    - address: "127.0.0.1:0"',
        "      tls: starttls",
        f"      cert_file: {work / 'smtp.pem'}",
        f"      key_file: {work / 'smtp.pem'}",
        "      auth: required",
        "  users:",
        "    - name: bench",
        f"      password_hash: {json.dumps(PasswordHasher().hash(password))}",
    ]
    return ClientAuth(client, "bench", password), lines


@contextlib.asynccontextmanager
async def _postfix(
    sc: Scenario, sink: HasPort, work: Path, _pg: PgCluster | None = None
) -> AsyncIterator[Target]:
    port = free_port()
    async with PostfixInstance(work / "postfix", port, sink.port, concurrency=sc.connections) as pf:
        master = pf.master_pid()
        sampler = Sampler(lambda: descendants(master), interval=_SAMPLE_EVERY)
        yield Target("postfix", port, lambda: tree_cpu_seconds(master), sampler, lambda: 0)


#: the relay under test by name: ``async with RELAYS[name](scenario, sink, workdir) as target``
RELAYS = {"sluice": _sluice, "postfix": _postfix}


class Counting(Protocol):
    """A sink that can say how many messages it has counted (Python's, or smtp-sink's)."""

    async def count(self) -> int: ...


async def wait_count(
    sink: Counting, target: int, *, stall: float, limit: float, every: float = 0.02
) -> int:
    """Poll the sink until it counted ``target``; give up after ``stall`` s without progress.

    ``every``: the poll interval (the time of the last message is known to that much).
    """
    deadline = time.monotonic() + limit
    last, last_change = -1, time.monotonic()
    while True:
        n = await sink.count()
        now = time.monotonic()
        if n >= target or now > deadline:
            return n
        if n != last:
            last, last_change = n, now
        elif now - last_change > stall:
            return n
        await asyncio.sleep(every)


async def run_scenario(relay: str, sc: Scenario, *, pg: PgCluster | None = None) -> dict[str, Any]:
    """Run one scenario against ``relay``: Sluice on SQLite ("sluice"), Sluice on
    PostgreSQL ("sluice-pg": ``spool.url`` on a fresh database of ``pg``), or "postfix";
    return its figures.
    """
    starter = {"sluice": _sluice, "sluice-pg": _sluice, "postfix": _postfix}[relay]
    if (relay == "sluice-pg") != (pg is not None):
        raise ValueError("sluice-pg, and only it, runs on a PostgreSQL cluster")
    with tempfile.TemporaryDirectory(prefix=f"bench-{relay}-") as tmp:
        work = Path(tmp)
        sink = await SinkProcess.start()
        try:
            async with starter(sc, sink, work, pg) as target:
                await smtp_ready(target.port)
                if sc.warmup:
                    warm = await run_load(
                        "127.0.0.1",
                        target.port,
                        messages=sc.warmup,
                        size=sc.size,
                        sessions=min(sc.sessions, sc.warmup),
                        run_id="warmup",
                        per_message=sc.per_message,
                        auth=target.auth,
                    )
                    await wait_count(sink, len(warm.sent), stall=30, limit=120)
                base = await sink.count()
                run = secrets.token_hex(4)
                store = target.store
                if store is not None:
                    await asyncio.to_thread(store.reset)
                    db_cpu0 = await asyncio.to_thread(store.cpu)
                target.sampler.start()
                cpu0 = target.cpu()
                sink_cpu0 = cpu_seconds(sink.proc.pid)
                gen_cpu0 = generator_cpu()
                t0 = time.time()
                sent: int | None = None  # smtp-source: how many it sent (untagged)
                if sc.generator == "smtp-source":
                    sent, load = await run_smtp_source(
                        "127.0.0.1",
                        target.port,
                        messages=sc.messages,
                        size=sc.size,
                        sessions=sc.sessions,
                        time_limit=sc.time_limit,
                        per_message=sc.per_message,
                    )
                else:
                    load = await run_load(
                        "127.0.0.1",
                        target.port,
                        messages=sc.messages,
                        size=sc.size,
                        sessions=sc.sessions,
                        time_limit=sc.time_limit,
                        run_id=run,
                        per_message=sc.per_message,
                        auth=target.auth,
                    )
                accepted = len(load.sent) if sent is None else sent
                t_accept = load.finished
                counted = await wait_count(sink, base + accepted, stall=30, limit=sc.time_limit)
                t_e2e = time.time()
                cpu = target.cpu() - cpu0
                sink_cpu = cpu_seconds(sink.proc.pid) - sink_cpu0
                gen_cpu = generator_cpu() - gen_cpu0
                await target.sampler.stop()
                db: dict[str, Any] = {"db_cpu_ms_per_msg": float("nan")}
                if store is not None:
                    db["db_cpu_ms_per_msg"] = (
                        ((await asyncio.to_thread(store.cpu)) - db_cpu0) / max(1, accepted) * 1000
                    )
                    # The sink counts a message before its outcome is committed.
                    await asyncio.to_thread(store.settle)
                    db.update(await asyncio.to_thread(store.figures, accepted))
                hwm = target.hwm()
                dump = await sink.dump(work / "sink.json")
                warnings = target.warnings()
                unsent = target.diagnose() if counted < base + accepted else []
        finally:
            await sink.stop()
    counts = tally(load, dump["tokens"], run)
    if sent is not None:
        # Untagged: only what the sink received against what smtp-source sent.
        # (Waiting stops at ``sent``, so a duplicate shows only if it came first.)
        received = counted - base
        counts = {
            "lost": max(0, sent - received),
            "duplicated": max(0, received - sent),
            "unexpected": 0,
            "e2e": [],
        }
    acc = load.accept_latencies
    return {
        "relay": relay,
        "spool": {"sluice": "sqlite", "sluice-pg": "postgresql"}.get(relay, "-"),
        "messages": sc.messages,
        "size": sc.size,
        "sessions": sc.sessions,
        "per_message": sc.per_message,
        "generator": sc.generator,
        "client": sc.client,
        "scenario": sc.name,
        "accepted": accepted,
        "refused": len(load.errors),
        "errors": load.errors[:5],
        "relay_warnings": len(warnings),
        "relay_warning_sample": warnings[:5],
        "unsent": unsent,
        "delivered": counted - base,
        "lost": counts["lost"],
        "duplicated": counts["duplicated"],
        "unexpected": counts["unexpected"],
        "accept_rate": accepted / max(1e-9, t_accept - t0),
        "e2e_rate": accepted / max(1e-9, t_e2e - t0),
        "accept_p50_ms": percentile(acc, 0.5) * 1000,
        "accept_p99_ms": percentile(acc, 0.99) * 1000,
        "e2e_p50_ms": percentile(counts["e2e"], 0.5) * 1000,
        "e2e_p99_ms": percentile(counts["e2e"], 0.99) * 1000,
        "cpu_ms_per_msg": cpu / max(1, accepted) * 1000,
        #: the Python sink's CPU per message, on the same cores (see RESULTS.md: it
        #: costs more per connection, and Postfix opens one per message to it)
        "sink_cpu_ms_per_msg": sink_cpu / max(1, accepted) * 1000,
        #: the generator's: this process (built-in) or smtp-source (a reaped child)
        "generator_cpu_ms_per_msg": gen_cpu / max(1, accepted) * 1000,
        "peak_rss_mb": max(target.sampler.peak, hwm) / 2**20,
        "seconds": t_e2e - t0,
        **db,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric figure; lost/duplicated/refused are summed (any is a failure)."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if key in ("lost", "duplicated", "unexpected", "refused"):
            out[key] = sum(r[key] for r in runs)
        elif isinstance(value, float) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    out["runs"] = len(runs)
    return out
