"""A private PostgreSQL cluster for ``bench run --spool postgresql``, and what it counts.

The bench starts its own cluster, as it starts its own Postfix: ``initdb`` in a
temporary directory, ``pg_ctl start`` on a free loopback port with a socket
directory of its own, stopped and removed at the end; the machine's own
clusters are never read or touched. ``initdb`` and ``postgres`` refuse to run
as root, so as root (CI, this machine) they run as the ``postgres`` user
through ``runuser``, the way ``tests/pg.py`` does it for the test suite.

Durability is PostgreSQL's default and Sluice's promise: ``fsync`` and
``synchronous_commit`` on, so a ``250`` waits for the WAL flush of its commit,
as on SQLite it waits for ``synchronous=FULL``. ``pg_stat_statements`` is
loaded, so that a run can tell the server's time per statement and the
statements that ran inside others (``statement_counts``); the round trips
themselves are counted on Sluice's side (``bench/roundtrips``, ``PgSpool``).

(Not ``tests/pg.py``'s cluster: the bench is a tool, not a test, and does not
import pytest; and it wants ``pg_stat_statements`` and loopback trust, where
the tests want SCRAM passwords as an operator would set them.)

Each run gets a fresh database (``new_database``), so runs do not see each
other's rows or statistics of their tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procstat import tree_cpu_seconds

__all__ = [
    "PG_BIN",
    "PgCluster",
    "PgSpool",
    "StatementCount",
    "per_message",
    "pg_available",
    "private_cluster",
    "statement_counts",
]


def _pg_bin() -> Path:
    """The newest installed server's programs (Debian: not on PATH), as ``tests/pg.py``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else Path("/usr/lib/postgresql/15/bin")


#: where the server's programs are
PG_BIN = _pg_bin()
#: the folder whose ``sitecustomize`` counts what Sluice's processes send (``PgSpool.env``)
_ROUNDTRIPS = Path(__file__).resolve().parent / "roundtrips"
#: ... every this many seconds
_DUMP_EVERY = 0.1
#: the role Sluice connects as (``spool.url``); the cluster trusts loopback
ROLE = "sluice"


def pg_available() -> bool:
    """``initdb`` and ``pg_ctl`` are installed (Debian: ``apt-get install postgresql``)."""
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class StatementCount:
    """One statement's calls in a run, and the time the server spent on them.

    ``toplevel`` statements are the ones Sluice sent; the others ran inside
    them (the foreign-key checks of an INSERT, a function's queries) and cost
    no round trip.
    """

    query: str
    calls: int
    total_ms: float
    toplevel: bool


class PgCluster:
    """A cluster in ``base``, owned by ``postgres`` when run as root; ``start``/``stop``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.sockets = base / "sock"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        self._databases = 0

    def _run(self, *args: str, timeout: float = 120) -> str:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_root else []
        proc = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def start(self) -> None:
        """``initdb`` (trust on loopback, one superuser) and ``pg_ctl start``; waits for it."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir()
        if self._as_root:
            # postgres must reach its directories; temporary directories are 0700.
            for d in (self.base, self.base.parent):
                d.chmod(0o755)
            shutil.chown(self.base, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"),
            *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"),
            "--no-instructions",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockets}'",
            "shared_preload_libraries": "'pg_stat_statements'",
            "pg_stat_statements.track": "all",
            "pg_stat_statements.track_utility": "on",
            "pg_stat_statements.max": "2000",
            # Durability as a real store (the defaults, said out loud).
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "max_connections": "100",
            "logging_collector": "off",
        }
        with (self.data / "postgresql.conf").open("a") as f:
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        self._run(
            str(PG_BIN / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "60"),
            "start",
        )
        self.psql("postgres", f"CREATE ROLE {ROLE} LOGIN")

    def stop(self) -> None:
        """``pg_ctl -m fast stop`` (no error when it is not running)."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def postmaster_pid(self) -> int:
        """The server's main process (every backend is its child)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def psql(self, db: str, sql: str) -> str:
        """Run ``sql`` as the superuser over the cluster's socket; its unaligned output."""
        return self._run(
            str(PG_BIN / "psql"),
            *("-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d", db),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql),
        )

    def new_database(self) -> str:
        """A fresh database owned by Sluice's role, counting statements; its name."""
        self._databases += 1
        name = f"bench{self._databases}"
        self.psql("postgres", f"CREATE DATABASE {name} OWNER {ROLE}")
        self.psql(name, "CREATE EXTENSION pg_stat_statements")
        return name

    def url(self, db: str) -> str:
        """The ``spool.url`` of ``db``: Sluice's role over loopback TCP (as from another host)."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{db}"


@contextlib.asynccontextmanager
async def private_cluster() -> AsyncIterator[PgCluster]:
    """A cluster in a temporary directory for as long as the block runs."""
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        cluster = PgCluster(Path(tmp) / "pg")
        try:
            await asyncio.to_thread(cluster.start)
            yield cluster
        finally:
            await asyncio.to_thread(cluster.stop)


def reset_statements(cluster: PgCluster, db: str) -> None:
    """Zero ``pg_stat_statements`` (all databases) at the start of a measured run."""
    cluster.psql(db, "SELECT pg_stat_statements_reset()")


def statement_counts(cluster: PgCluster, db: str) -> list[StatementCount]:
    """Calls per statement in ``db`` by Sluice's role since the last reset, most first."""
    out = cluster.psql(
        db,
        "SELECT calls, round(total_exec_time::numeric, 3), toplevel,"
        " regexp_replace(query, '\\s+', ' ', 'g')"
        " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
        f" JOIN pg_database d ON d.oid = s.dbid WHERE r.rolname = '{ROLE}'"
        f" AND d.datname = '{db}' ORDER BY calls DESC, query",
    )
    found = []
    for line in out.splitlines():
        calls, ms, toplevel, query = line.split("|", 3)
        found.append(StatementCount(query, int(calls), float(ms), toplevel == "t"))
    return found


def per_message(counts: list[StatementCount], messages: int) -> dict[str, Any]:
    """Statements Sluice sent per message, by statement, and the transactions among them.

    Every statement Sluice sends is a round trip of its own, except where
    several go in one simple query (``BEGIN; ...``), which the server counts
    one by one all the same; ``statements`` lists them all, so that where the
    round trips go can be read from it.
    """
    per = max(1, messages)
    sent = [c for c in counts if c.toplevel]
    return {
        "statements_per_msg": sum(c.calls for c in sent) / per,
        "nested_per_msg": sum(c.calls for c in counts if not c.toplevel) / per,
        "server_ms_per_msg": sum(c.total_ms for c in sent) / per,
        "statements": [
            {"calls_per_msg": round(c.calls / per, 3), "ms": c.total_ms, "query": c.query[:200]}
            for c in sent
        ],
    }


class PgSpool:
    """One run's database: its ``spool.url``, and what the run cost the server.

    Two counts of the statements: the client's (``bench/roundtrips``: every
    ``execute`` of every Sluice process, each a round trip, by connection)
    and the server's (``pg_stat_statements``: its time, and the statements
    that ran inside others, such as foreign-key checks).
    """

    def __init__(self, cluster: PgCluster, db: str, counts: Path) -> None:
        self.cluster = cluster
        self.db = db
        self.url = cluster.url(db)
        self.counts = counts
        counts.mkdir(parents=True, exist_ok=True)
        self._sent0: Counter[str] = Counter()

    def env(self) -> dict[str, str]:
        """The environment that makes Sluice's processes count what they send."""
        path = [str(_ROUNDTRIPS), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"BENCH_PG_COUNTS": str(self.counts), "PYTHONPATH": os.pathsep.join(path)}

    def sent(self) -> Counter[str]:
        """What every Sluice process has sent so far, by connection and statement."""
        total: Counter[str] = Counter()
        for f in self.counts.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                total.update(json.loads(f.read_text()))
        return total

    def cpu(self) -> float:
        """CPU seconds of the whole server so far (backends, WAL writer, checkpointer)."""
        return tree_cpu_seconds(self.cluster.postmaster_pid())

    def reset(self) -> None:
        """Start counting statements from zero."""
        reset_statements(self.cluster, self.db)
        time.sleep(_DUMP_EVERY * 3)
        self._sent0 = self.sent()

    def unsent(self) -> list[Any]:
        """Recipients not sent, by state (as ``bench.runner`` reads a SQLite spool)."""
        out = self.cluster.psql(
            self.db,
            "SELECT status, count(*), max(attempts), max(last_reply)"
            " FROM recipients WHERE status <> 'sent' GROUP BY status",
        )
        return [line.split("|") for line in out.splitlines()]

    def settle(self, within: float = 15.0) -> None:
        """Wait until every delivery's outcome is committed (the sink counts before that)."""
        deadline = time.monotonic() + within
        while self.unsent() and time.monotonic() < deadline:
            time.sleep(0.05)

    def figures(self, messages: int) -> dict[str, Any]:
        """Round trips and statements per message since ``reset``."""
        time.sleep(_DUMP_EVERY * 3)  # the processes write their counts every 100 ms
        sent = self.sent()
        sent.subtract(self._sent0)
        per = max(1, messages)
        trips = sorted(((n, key) for key, n in sent.items() if n > 0), reverse=True)
        by_connection: Counter[str] = Counter()
        for n, key in trips:
            by_connection[key.partition("\t")[0]] += n
        return {
            **per_message(statement_counts(self.cluster, self.db), messages),
            "round_trips_per_msg": sum(n for n, _k in trips) / per,
            "round_trips_by_connection": {k: v / per for k, v in by_connection.items()},
            "round_trips": [
                {
                    "connection": key.partition("\t")[0],
                    "per_msg": round(n / per, 3),
                    "query": key.partition("\t")[2],
                }
                for n, key in trips
            ],
        }
