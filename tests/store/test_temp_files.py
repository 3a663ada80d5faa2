"""The spool writer needs no temporary files: a full ``/var/tmp`` does not fail its commits.

Inside a transaction, SQLite keeps a *statement journal* for a statement that
may change several rows, and one for each SAVEPOINT (the writer gives each job
of a group commit one): the pages the transaction had already changed, as they
were before. With SQLite's default it spills to a temporary file once it holds
64 KiB; under load the daemon's writer made 8 to 11 a second in
``/var/tmp`` (strace, ``bench run`` at 1,000 msg/s). When that file system was
full, a claim or an outcome failed with "database or disk is full" while the
spool's own disk had room. The writer keeps them in memory
(``PRAGMA temp_store=MEMORY`` in ``relay.store.writer.connect``).

SQLite reads its temporary directory once per process (``SQLITE_TMPDIR``), so
the spool runs in a child process pointed at a real tmpfs filled to the last
byte; mounting it needs root (CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from relay.store.writer import connect
from tests.small_disk import fill, small_tmpfs

ROOT = Path(__file__).resolve().parents[2]

#: a job of two multi-row UPDATEs: the second one's statement journal holds every
#: recipients page the first changed (3,000 rows, far more than 64 KiB)
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from relay.config import SpoolSettings
    from relay.store.queue import NewMessage, new_queue_id
    from relay.store.spool import Spool

    async def main() -> None:
        settings = SpoolSettings(path=sys.argv[1])
        async with await Spool.open(settings) as spool:
            now = time.time()
            for batch in range(30):
                await asyncio.gather(*[
                    spool.enqueue(NewMessage(
                        new_queue_id(now + (batch * 100 + i) / 1000),
                        "app@sender.test", [f"r{batch * 100 + i}@example.net"],
                        b"Subject: s\\r\\n\\r\\nhi\\r\\n", "s", now,
                    ))
                    for i in range(100)
                ])

            def rewrite(c):
                c.execute("UPDATE recipients SET updated_at = 1")
                return c.execute("UPDATE recipients SET updated_at = 2").rowcount

            print("rewrote", await spool._writer.submit(rewrite))

    asyncio.run(main())
    """
)


def test_a_writer_connection_keeps_temporary_storage_in_memory(tmp_path: Path) -> None:
    conn = connect(tmp_path / "spool.sqlite3")
    try:
        assert conn.execute("PRAGMA temp_store").fetchone()[0] == 2  # MEMORY
    finally:
        conn.close()


def test_a_full_temporary_directory_does_not_fail_the_spools_commits(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "tmp", 1) as tmp:
        fill(tmp)
        env = {**os.environ, "SQLITE_TMPDIR": str(tmp), "TMPDIR": str(tmp)}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "spool.sqlite3")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["rewrote", "3000"]
