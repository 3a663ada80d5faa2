"""Run the daemon's event loop: uvloop when it is installed (the ``fast`` extra)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["run_fast"]


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
