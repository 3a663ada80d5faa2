"""CPU time and memory of a process (or a process tree) from ``/proc``."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "Sampler",
    "cpu_seconds",
    "descendants",
    "rss_bytes",
    "tree_cpu_seconds",
    "tree_rss_bytes",
]

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime (threads included); with ``children``, also reaped children's."""
    fields = _stat_fields(pid)
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int(_stat_fields(int(entry))[1])
            parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def tree_rss_bytes(root: int, key: str = "VmRSS") -> int:
    """Summed RSS (or ``VmHWM``) of a process tree, e.g. Sluice and its accept workers."""
    total = 0
    for pid in descendants(root):
        with contextlib.suppress(OSError):
            total += rss_bytes(pid, key)
    return total


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process tree: the live processes plus what the root has reaped."""
    total = 0.0
    for pid in descendants(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid, children=True)
    return total


@dataclass
class Sampler:
    """Poll the summed RSS of ``pids()`` every ``interval`` seconds; keep the peak."""

    pids: Callable[[], list[int]]
    interval: float = 0.05
    peak: int = 0
    last: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, ValueError):
                total += rss_bytes(pid)
        self.last = total
        self.peak = max(self.peak, total)
        return total

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.samples.append((loop.time(), self.sample()))
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rss-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
