"""File descriptors for SMTP clients: how many sessions a process can hold, and EMFILE.

Every client session holds a socket, and one in a long DATA a spill file
too (``relay.inbound.data``). Under systemd's default soft limit of 1,024
descriptors, 1,100 idle clients ran the process out: asyncio's accept loop
then logged an ERROR for every failed ``accept()`` (95,941 lines in 31 s,
its retries multiplying) while new clients waited in the backlog.

Three defences, in order:

1. ``fit_sessions`` raises the soft ``RLIMIT_NOFILE`` towards the hard
   limit when ``smtp.max_connections`` needs it, and otherwise caps the
   sessions at what the descriptors allow. Over the cap a client is not
   accepted: it waits in the listen backlog, which costs this process no
   descriptor (``relay.inbound.admission``), until a session ends or it has
   waited ``smtp.connection_wait`` (then ``421``, and its descriptor comes
   back at once).
2. ``quiet_emfile`` turns the event loop's "out of system resource" reports
   into one line per interval with a count (they still happen if something
   else takes the descriptors). Accepting resumes by itself when descriptors
   free: the SMTP accept loop (``relay.inbound.admission``) tries again when a
   session ends or after a second, as asyncio's own accept loop does.
3. The systemd unit sets ``LimitNOFILE=65536``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FD_RESERVE", "OUT_OF_DESCRIPTORS", "Throttle", "fit_sessions", "quiet_emfile"]

log = logging.getLogger("sluice.smtp")

#: descriptors left for everything but client sessions: spool files, provider
#: connections, the admin server, listening sockets, the loop's own
FD_RESERVE = 64
#: a session's socket, and a spill file while it reads a large DATA
FDS_PER_SESSION = 2

#: the errors of an ``accept()`` that ran out of descriptors or memory
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Throttle:
    """Lets one log line through per ``interval`` seconds and counts the rest.

    A client can provoke some warnings at will (connect over the limit, run
    the process out of descriptors); one line per interval with a count says
    as much as thousands of identical ones.
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._suppressed = 0

    def take(self) -> int | None:
        """``None``: stay quiet; else log now, with this many suppressed since the last line."""
        now = self._clock()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self._interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def fit_sessions(max_connections: int) -> int:
    """How many sessions this process may hold: ``max_connections`` if descriptors allow.

    Raises the soft descriptor limit (up to the hard one) if that is what it
    takes; else logs once and returns the smaller number that fits.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_RESERVE + FDS_PER_SESSION * max_connections
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return max_connections
    fits = max(1, (soft - FD_RESERVE) // FDS_PER_SESSION)
    log.warning(
        "smtp.max_connections is %d but the open-file limit (ulimit -n) is %d: "
        "accepting at most %d clients at a time; raise LimitNOFILE",
        max_connections,
        soft,
        fits,
    )
    return fits


def quiet_emfile(loop: asyncio.AbstractEventLoop, *, interval: float = 60.0) -> None:
    """Log the loop's out-of-descriptors reports once per ``interval``; pass on the rest."""
    previous = loop.get_exception_handler()
    throttle = Throttle(interval)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS:
            suppressed = throttle.take()
            if suppressed is not None:
                log.error(
                    "cannot accept SMTP clients: %s (%s); new clients wait until "
                    "descriptors free%s; raise LimitNOFILE or lower smtp.max_connections",
                    exc.strerror,
                    context.get("message", ""),
                    f"; {suppressed} more since the last message" if suppressed else "",
                )
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
