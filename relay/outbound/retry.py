"""Pure retry decisions: what happens to a recipient after one attempt.

The delay after the *n*-th failed attempt is::

    delay = min(max_delay, first_delay * 2 ** (n - 1)) * (1 + jitter * u),  u ∈ [-1, 1)

the exponential backoff of stamina and RFC 5321 § 4.5.4.1 (``relay.backoff``), with relative jitter
so that a burst of failures does not come back as a burst. With
``retry.schedule`` (Haraka's ``temp_fail_intervals``: ``[1m, 5m, 1h*3, 4h]``)
the *n*-th entry of the list, repeats expanded, is the base delay instead, the
last entry repeating until ``give_up_after``; the same jitter applies. A provider's own hint
("try again in 5 minutes") is honoured when it asks for longer. A recipient
still failing temporarily ``give_up_after`` its first attempt expires; the
last retry is pulled in to fall exactly on that deadline, so the expiry is
decided by an attempt rather than by a timer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from relay.backoff import exponential, jittered
from relay.config import RetrySettings, ScheduleStep
from relay.model import (
    AttemptStatus,
    Delivered,
    Outcome,
    PermFailure,
    RecipientStatus,
    TempFailure,
)

__all__ = ["Decision", "backoff", "decide", "scheduled"]


@dataclass(frozen=True, slots=True)
class Decision:
    status: RecipientStatus
    next_attempt_at: float | None

    @property
    def attempt_status(self) -> AttemptStatus:
        """The delivery-log status of the attempt this decision closes (``STATUS_WORDS``)."""
        logged = self.status.attempt_status
        assert logged is not None, self.status  # decide() returns outcomes only
        return logged


def backoff(attempts: int, policy: RetrySettings, rng: random.Random) -> float:
    """Seconds to wait after ``attempts`` failed attempts (``attempts >= 1``)."""
    if policy.schedule:
        base = scheduled(attempts, policy.schedule)
    else:
        base = exponential(attempts, first=policy.first_delay, cap=policy.max_delay)
    return jittered(base, policy.jitter, rng)


def scheduled(attempts: int, schedule: Sequence[ScheduleStep]) -> float:
    """The schedule's delay after ``attempts`` failed attempts; the last step repeats."""
    n = max(0, attempts - 1)
    for step in schedule:
        if n < step.repeat:
            return step.delay
        n -= step.repeat
    return schedule[-1].delay


def decide(
    outcome: Outcome,
    *,
    attempts: int,
    since: float,
    now: float,
    policy: RetrySettings,
    rng: random.Random,
) -> Decision:
    """The next state of a recipient after an attempt.

    Args:
        outcome: what the attempt gave for this recipient.
        attempts: attempts so far, this one included.
        since: when the give-up clock started (first acceptance, or a manual retry).
        now: the current time.
        policy: the ``retry`` section of the config.
        rng: the source of jitter (seeded in tests).
    """
    match outcome:
        case Delivered():
            return Decision(RecipientStatus.SENT, None)
        case PermFailure():
            return Decision(RecipientStatus.FAILED, None)
        case TempFailure(retry_after=hint):
            deadline = since + policy.give_up_after
            if now >= deadline:
                return Decision(RecipientStatus.EXPIRED, None)
            delay = backoff(attempts, policy, rng)
            if hint is not None:
                longest = max([policy.max_delay, *(s.delay for s in policy.schedule or ())])
                delay = max(delay, min(hint, longest * 4))
            return Decision(RecipientStatus.DEFERRED, min(now + delay, deadline))
