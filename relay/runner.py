"""The daemon's process: its event loop (uvloop when installed), and its heap after large mail."""

from __future__ import annotations

import asyncio
import ctypes
import gc
from collections.abc import Coroutine
from typing import Any

__all__ = ["GIVE_BACK_AFTER", "LARGE_MESSAGE", "give_back_memory", "run_fast", "settle_heap"]

#: a message this large is followed by ``give_back_memory`` (bytes)
LARGE_MESSAGE = 1 << 20
#: seconds after it: by then every copy of it is gone
GIVE_BACK_AFTER = 1.0


def run_fast(coro: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop when it is installed (the ``fast`` extra).

    uvloop's transports cut the per-message CPU of the event loop (socket
    writes, selector, callbacks); the daemon uses nothing it lacks.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def settle_heap() -> None:
    """Put what start-up built out of the cyclic collector's reach: ``gc.freeze()``.

    Called once, when a process is ready to serve. Imports, settings, the
    store and the listeners are tens of thousands of objects that live as
    long as the process; every full collection walked them all again, and a
    full collection stops every session of the process while it runs. With
    10 clients it paused the accept worker for up to 31 ms (four times in
    six seconds) and the daemon for 40 ms; frozen, the longest full
    collection took 4.7 ms (bench/HISTORY.md, round 3). Objects made later
    are collected as before, so memory stays as flat as it was.
    """
    gc.collect()
    gc.freeze()


def give_back_memory() -> None:
    """Return the heap's free pages to the system: glibc's ``malloc_trim(0)``, where there is one.

    glibc keeps what a large message freed in its heaps for reuse: after one
    25 MB message, the accept worker stayed 27 MB and the daemon 28 MB larger
    for good. ``malloc_trim(0)`` releases free pages anywhere in the heaps (a
    few milliseconds); it is called after a large message only. No library
    for one libc call; where the C library has no ``malloc_trim`` (musl),
    nothing happens.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
