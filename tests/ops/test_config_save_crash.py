"""``kill -9`` during a config save leaves the old or the new file, never a broken one.

A child process saves the config in a loop through ``write_atomic`` (each
save counts one provider's ``daily_limit`` up by one, from the file's current
digest); the test SIGKILLs it at random points, many times. After each kill
the file must be the complete text of some count (the one before the save the
kill interrupted, or after it), byte for byte, and load with ``sluice
check``'s rules. Two concurrent saves from the same base
digest: exactly one wins, the other is refused with the difference.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from relay.config import loads
from relay.config_edit import ConfigDocument, EditRefused, write_atomic
from tests.layers import ROOT

pytestmark = pytest.mark.slow

#: kills (each a fork of a process that has the writer imported)
KILLS = 20

# One process imports the writer once and forks a saver per round (a fresh
# interpreter per kill cost about 2 s of imports on a loaded machine): the
# test reads the saver's pid, kills it, and asks for the next one.
_FORKER = """
import os, sys
from relay.config_edit import ConfigDocument, write_atomic
path = sys.argv[1]
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        sys.stdin.close()
        while True:
            doc = ConfigDocument.read(path)
            n = doc.get(("providers", 0, "daily_limit")) or 0
            doc.set(("providers", 0, "daily_limit"), n + 1)
            write_atomic(path, doc.render(), expect_digest=doc.digest, base_text=doc.text)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


#: small, so that a save takes milliseconds and a kill lands inside one often
SMALL = """\
# the relay on this host
spool:
  path: spool.sqlite3   # beside this file
providers:
  # the main provider
  - id: main
    host: smtp.example.com
    port: 587
    username: app   # its password: the systemd credential "main"

# what follows is routing
routes: []
"""


def _texts() -> tuple[str, str]:
    text = SMALL
    a = ConfigDocument(text.encode())
    a.set(("providers", 0, "port"), 2525)
    b = ConfigDocument(text.encode())
    b.set(("providers", 0, "port"), 2526)
    return a.render(), b.render()


def _with_count(text: str, n: int) -> str:
    doc = ConfigDocument(text.encode())
    doc.set(("providers", 0, "daily_limit"), n)
    return doc.render()


async def test_kill_9_during_save_leaves_a_whole_file(tmp_path: Path) -> None:
    base, _ = _texts()
    path = tmp_path / "sluice.yaml"
    path.write_text(base)
    rng = random.Random(25)
    count = 0
    forker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FORKER,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert forker.stdin is not None and forker.stdout is not None
    try:
        for _ in range(KILLS):
            forker.stdin.write(b"go\n")
            async with asyncio.timeout(30):
                pid = int(await forker.stdout.readline())
            await asyncio.sleep(rng.uniform(0.02, 0.2))
            os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(30):
                assert (await forker.stdout.readline()).strip() == b"reaped"
            text = path.read_text()
            now = loads(text, secrets=False).providers[0].daily_limit or 0
            assert now >= count
            assert text == (_with_count(base, now) if now else base)  # whole, byte for byte
            count = now
    finally:
        forker.stdin.close()
        async with asyncio.timeout(30):
            await forker.wait()
    assert count > KILLS  # it did save, many times
    # A temp file a killed save left behind is garbage beside the config, never the config.
    leftovers = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
    assert all(name.startswith(".sluice.yaml.") for name in leftovers)


async def test_two_saves_from_the_same_base_one_wins(tmp_path: Path) -> None:
    old, _ = _texts()
    path = tmp_path / "sluice.yaml"
    path.write_text(old)
    first = ConfigDocument.read(path)
    second = ConfigDocument.read(path)
    first.set(("providers", 0, "daily_limit"), 100)
    second.set(("providers", 0, "daily_limit"), 200)

    def save(doc: ConfigDocument) -> str:
        return write_atomic(path, doc.render(), expect_digest=doc.digest, base_text=doc.text)

    results = await asyncio.gather(
        asyncio.to_thread(save, first), asyncio.to_thread(save, second), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, EditRefused)]
    won = [r for r in results if isinstance(r, str)]
    assert len(refused) == 1 and len(won) == 1
    assert refused[0].diff is not None and "daily_limit" in refused[0].diff
    text = path.read_text()
    assert text in (first.render(), second.render())
    loads(text, secrets=False)
