"""Exponential back-off: the one formula every retry loop in Sluice uses (pure).

The delay before the *n*-th retry (``n >= 1``) is::

    delay = min(cap, first * 2 ** (n - 1))
    delay = max(0, delay * (1 + jitter * u))      u = rng.uniform(-1, 1)

which is stamina's ``_compute_backoff`` (``min(max_backoff, initial *
exp_base ** (num - 1) + jitter)``) with ``exp_base = 2``, except for the
jitter: stamina adds up to ``max_jitter`` seconds, here the delay moves by up
to ``jitter`` of itself in either direction, so a burst of failures does not
come back as a burst whatever the size of the delay (RFC 5321 § 4.5.4.1 asks
for the same spreading). The jitter is applied after the cap, so a capped
delay is spread too.

Each caller keeps its own parameters and says what its ``n`` counts:

* ``relay.outbound.retry`` (a recipient's next attempt: ``retry.first_delay``
  up to ``retry.max_delay``, relative jitter);
* ``relay.notify.webhooks`` (an event not acknowledged);
* ``relay.outbound.pending`` (an outcome the spool could not record yet);
* ``relay.bounces.poller`` (the bounce mailbox unreachable);
* ``admin.auth`` (failed logins beyond the free ones);
* ``relay.inbound.workers`` (an accept worker that cannot start).

Hand-written rather than taken from stamina: stamina wraps a call and sleeps
itself, while every caller here only needs the number (to store as a
``next_attempt_at``, to show on a page, or to answer ``Retry-After``).
"""

from __future__ import annotations

import random

__all__ = ["exponential", "jittered"]

#: 2 ** 62 seconds is far past any cap; a larger exponent only risks OverflowError
_MAX_EXPONENT = 62


def exponential(
    n: int,
    *,
    first: float,
    cap: float,
    jitter: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before the ``n``-th retry: ``first`` doubling up to ``cap``.

    Args:
        n: which retry this is, from 1 (``first``); below 1 counts as 1.
        first: the first delay, in seconds.
        cap: the longest delay before jitter, in seconds.
        jitter: the relative spread, 0 (none) to 1 (anywhere from 0 to twice the delay).
        rng: the source of the spread (seeded in tests); needed when ``jitter`` is set.

    Raises:
        ValueError: ``jitter`` is set and there is no ``rng``.
    """
    base = min(cap, first * 2.0 ** max(0, min(n - 1, _MAX_EXPONENT)))
    return jittered(base, jitter, rng)


def jittered(delay: float, jitter: float, rng: random.Random | None) -> float:
    """``delay`` moved by up to ``jitter`` of itself either way, never below 0.

    ``rng`` is drawn from once whenever it is given, even with ``jitter`` 0, so
    that a seeded sequence does not depend on whether jitter is configured.

    Raises:
        ValueError: ``jitter`` is set and there is no ``rng``.
    """
    if rng is None:
        if jitter:
            raise ValueError("jitter needs an rng")
        return max(0.0, delay)
    return max(0.0, delay * (1 + jitter * rng.uniform(-1.0, 1.0)))
