"""``python -m bench dkim``: what DKIM signing costs per message, and what the event loop waits.

For RSA 2048 and Ed25519, over 2 KB and 100 KB messages, ``messages``
distinct messages (each its own Message-ID, so the signature cache never
answers) go through ``relay.outbound.dkim.Signer.sign``, the path every
provider attempt takes, one after another on one event loop. Measured:

* wall time and CPU time (all threads of the process) per message;
* the event loop's stalls meanwhile: a ticker task asks for a 1 ms sleep
  over and over, and its overshoots (p99, longest) are what any other task
  (a delivery, the listener) would have waited; the same ticker alone for
  0.5 s first gives the machine's own noise to compare with;
* a cache hit (the same bytes offered to a second provider), and the hook
  with no ``dkim:`` domains (``sign(None, ...)``), which is all that the
  loopback path without DKIM gains.

Bounded: 50 messages per case by default, a few seconds in all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from relay.config import DkimDomain
from relay.dkim import Algorithm, generate_key
from relay.outbound.dkim import Signer, sign

__all__ = ["run_dkim"]

_LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"


def _message(size: int, n: int) -> bytes:
    head = (
        b"From: App <app@example.com>\r\nTo: someone@example.net\r\nSubject: bench\r\n"
        b"Date: Mon, 07 Dec 2026 14:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        + f"Message-ID: <{n}@bench.example.com>\r\n\r\n".encode()
    )
    return head + _LINE * max(1, (size - len(head)) // len(_LINE))


async def _ticker(stop: asyncio.Event, stalls: list[float]) -> None:
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.001)
        stalls.append(time.perf_counter() - before - 0.001)


def _p99(values: list[float]) -> float:
    return sorted(values)[int(0.99 * (len(values) - 1))] if values else 0.0


async def _idle_stalls(seconds: float) -> list[float]:
    """The ticker's overshoots with nothing else running: the machine's own noise."""
    stop, stalls = asyncio.Event(), list[float]()
    ticker = asyncio.create_task(_ticker(stop, stalls))
    await asyncio.sleep(seconds)
    stop.set()
    await ticker
    return stalls


async def _case(algorithm: Algorithm, size: int, messages: int) -> dict[str, Any]:
    key, _ = generate_key(algorithm)
    signer = Signer([(DkimDomain(domain="example.com", selector="bench", key=None), key)])
    batch = [_message(size, i) for i in range(messages)]
    await sign(signer, _message(size, -1))  # warm-up: imports, the thread pool
    idle = await _idle_stalls(0.5)
    stop, stalls = asyncio.Event(), list[float]()
    ticker = asyncio.create_task(_ticker(stop, stalls))
    await asyncio.sleep(0.01)
    stalls.clear()
    each = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for data in batch:
        t = time.perf_counter()
        signed = await sign(signer, data)
        each.append(time.perf_counter() - t)
        assert signed is not data
        # A delivery awaits the network between two messages: let the loop run, so
        # that a stall is what one signature holds it, not the whole batch.
        await asyncio.sleep(0)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    stop.set()
    await ticker
    t = time.perf_counter()
    for _ in range(100):
        await sign(signer, batch[0])  # cached
    hit = (time.perf_counter() - t) / 100
    return {
        "algorithm": algorithm,
        "size": len(batch[0]),
        "messages": messages,
        "ms_per_msg": 1000 * wall / messages,
        "ms_p50": 1000 * statistics.median(each),
        "cpu_ms_per_msg": 1000 * cpu / messages,
        "loop_stall_p99_ms": 1000 * _p99(stalls),
        "loop_stall_max_ms": 1000 * max(stalls, default=0.0),
        "idle_loop_stall_p99_ms": 1000 * _p99(idle),
        "idle_loop_stall_max_ms": 1000 * max(idle, default=0.0),
        "cache_hit_us": 1e6 * hit,
    }


async def run_dkim(messages: int = 50, sizes: tuple[int, ...] = (2048, 102400)) -> dict[str, Any]:
    """Every case, and the cost of the hook without DKIM (ns per call)."""
    cases = [
        await _case(algorithm, size, messages) for algorithm in ("rsa", "ed25519") for size in sizes
    ]
    data = _message(2048, 0)
    n = 100_000
    t = time.perf_counter()
    for _ in range(n):
        await sign(None, data)
    return {"cases": cases, "no_dkim_hook_ns": 1e9 * (time.perf_counter() - t) / n}
