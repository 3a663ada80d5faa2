"""Words for people: counts ("1 recipient", "2 recipients") and times ("2026-12-07 09:15:02 UTC").

Every time Sluice shows a person (the CLI, the admin pages, log lines that
name a moment) is written by ``when``: UTC, seconds, and the zone spelled
out, as Postfix's logs and most admin pages of mail systems show it. One
zone for every front-end means a time on the admin page, in ``sluice queue
show`` and in the daemon log can be compared by eye, whatever ``TZ`` the
operator's shell or the service has; the explicit ``UTC`` keeps it from
being read as local time. Machine-readable times (JSON, CSV) stay numbers or
ISO 8601 and are not this module's business.
"""

from __future__ import annotations

import time

__all__ = ["NEVER", "plural", "when"]

#: what ``when`` shows for no time at all (a recipient with no next attempt)
NEVER = "-"


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """``n`` and the noun in the number that fits: ``plural(1, "attempt")`` is "1 attempt".

    Args:
        n: the count.
        singular: the noun for one.
        plural_form: the noun for any other count; ``singular + "s"`` when not given.
    """
    word = singular if n == 1 else (plural_form or singular + "s")
    return f"{n} {word}"


def when(ts: float | None, *, empty: str = NEVER) -> str:
    """A Unix time for people: ``2026-12-07 09:15:02 UTC`` (``empty`` for ``None``).

    Args:
        ts: seconds since the epoch, or ``None``.
        empty: what to show for ``None``.
    """
    if ts is None:
        return empty
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
