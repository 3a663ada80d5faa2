"""Exception hierarchy for Sluice.

Expected outcomes (a recipient deferred, a message refused) are values, not
exceptions; these are for what callers must handle or report.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ListenError",
    "QueueIdTaken",
    "SluiceError",
    "SpoolError",
    "SpoolLocked",
    "UnknownMessage",
]


class SluiceError(Exception):
    """Root of every error Sluice raises on purpose."""


class ConfigError(SluiceError, ValueError):
    """A configuration file is unreadable or invalid.

    ``issues`` holds one line per problem, each ``FILE:LINE: dotted.key: message``.
    """

    def __init__(self, issues: list[str], /) -> None:
        super().__init__("\n".join(issues))
        self.issues = list(issues)


class ListenError(SluiceError, OSError):
    """An address from the config cannot be listened on (in use, not local, no permission).

    ``setting`` is the config key (``smtp.listen``, ``admin.listen``), ``address``
    the ``host:port`` and ``reason`` the system's words, such as "Address already in use".
    """

    def __init__(self, setting: str, address: str, reason: str, /) -> None:
        super().__init__(f"cannot listen on {address} ({setting}): {reason}")
        self.setting = setting
        self.address = address
        self.reason = reason


class SpoolError(SluiceError, OSError):
    """The spool could not be read or written."""


class SpoolLocked(SpoolError):
    """Another Sluice process holds the spool."""


class QueueIdTaken(SpoolError):
    """A message already has this queue ID; nothing was stored (draw another and try again).

    IDs are 11 hex digits of milliseconds and 20 random bits: at thousands of
    messages a second, two of one millisecond drew the same bits about once
    per 200,000 messages (a ``451`` to a client for nothing).
    """


class SpoolUnreachable(SpoolError):
    """The spool's database server cannot be reached (PostgreSQL down, network gone).

    Not the message's fault nor the disk's: the listener says so in its
    ``451``, and the writer and readers connect again by themselves.
    """


class UnknownMessage(SluiceError, LookupError):
    """No message with that queue ID exists."""
