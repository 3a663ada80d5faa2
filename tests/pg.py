"""A private PostgreSQL cluster for the tests: Debian's server, on loopback, per test session.

``initdb`` and ``postgres`` refuse to run as root, so the cluster belongs to
the ``postgres`` system user (made by Debian's package) and its commands run
through ``runuser``; as any other user they run as that user. The cluster
lives in a directory of its own under the system's temp dir, listens on a
free loopback port and a socket in that directory, and is stopped (``pg_ctl
-m fast stop``) when the session ends. Local socket connections are trusted
(the tests' own administration); TCP connections ask for a password
(SCRAM), the way Sluice's ``spool.password`` is meant to be used.

Each test gets an empty database of its own (``PgCluster.new_database``).
Under CI (``CI`` set) a missing PostgreSQL fails the test: ``.ci/install-system-deps``
installs it, and a skip there would hide a broken install step.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import SecretStr

from relay.config import SpoolSettings
from relay.secrets import SecretSource
from tests.peers import free_port

__all__ = ["PgCluster", "PgDatabase", "pg_bin", "start_cluster"]

#: the password of the role the tests connect as over TCP (a test secret, nothing more)
PASSWORD = "sluice-test-pw"
ROLE = "sluice"


def pg_bin() -> Path:
    """The directory of the newest installed server's programs; fail under CI, else skip."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    message = "PostgreSQL is not installed (apt-get install postgresql; .ci/install-system-deps)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _as_owner(argv: list[str], owner: str | None) -> list[str]:
    return ["runuser", "-u", owner, "--", *argv] if owner else argv


@dataclass
class PgDatabase:
    """One empty database of the cluster, and how Sluice reaches it."""

    url: str
    name: str
    password: str = PASSWORD

    def settings(self, path: Path, node: str = "test-node") -> SpoolSettings:
        """``spool`` settings for this database, with ``path`` as the node's state directory."""
        secret = SecretSource(name="password", inline=SecretStr(self.password))
        return SpoolSettings(path=path, url=self.url, password=secret, node=node)

    def config(self, node: str = "test-node") -> dict[str, object]:
        """The YAML ``spool`` keys for this database (``path`` is the caller's)."""
        return {"url": self.url, "password": self.password, "node": node}


@dataclass
class PgCluster:
    """A running private cluster: its data directory, port and socket directory."""

    bin: Path
    root: Path
    port: int
    owner: str | None
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "run"

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the local socket; its output."""
        argv = [
            str(self.bin / "psql"),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockets),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        ]
        done = subprocess.run(
            _as_owner(argv, self.owner), capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout.strip()

    def new_database(self) -> PgDatabase:
        """A new empty database owned by the tests' role."""
        name = f"sluice_{os.getpid()}_{next(self._names)}"
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')
        return PgDatabase(self.url(name), name)

    def _ctl(self, *args: str) -> None:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), *args]
        done = subprocess.run(
            _as_owner(argv, self.owner), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        """Start the server (again, after ``stop``), and wait until it takes connections."""
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        self._ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server now (``-m fast``: sessions are ended, nothing committed is lost)."""
        self._ctl("-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def start_cluster() -> PgCluster:
    """``initdb`` a new cluster in a temp directory and start it on a free loopback port."""
    bin_dir = pg_bin()
    owner = "postgres" if os.geteuid() == 0 else None
    if owner is not None:
        try:
            pwd.getpwnam(owner)
        except KeyError:
            pytest.fail("no 'postgres' user to run the test cluster as (Debian's postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
    (root / "run").mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if owner is not None:
        entry = pwd.getpwnam(owner)
        for path in (root, root / "run", pwfile):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(root / "data"),
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        f"--pwfile={pwfile}",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    ]
    done = subprocess.run(
        _as_owner(argv, owner), capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
    cluster = PgCluster(bin_dir, root, free_port(), owner)
    cluster.start()
    cluster.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    return cluster


def stop_cluster(cluster: PgCluster) -> None:
    with contextlib.suppress(RuntimeError):
        if cluster.running():
            cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)
