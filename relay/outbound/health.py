"""A provider's health: what users see (``ProviderHealth``) and the circuit breaker.

After ``threshold`` consecutive failures of the provider itself (connection,
TLS, AUTH) the circuit opens: the provider is skipped for ``cooldown``
seconds, then tried again (half-open); one more failure opens it again, one
success closes it. A reply that speaks for the provider (421, throttling, "try
again in N minutes"; ``relay.outbound.replies`` decides which) pauses it for
its hint, or the cool-down, whatever the count. Times are
wall-clock seconds so they can be shown as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.model import ProviderHealth
from relay.wording import plural

__all__ = ["Health", "HealthView", "ProviderHealth"]


@dataclass(frozen=True, slots=True)
class HealthView:
    state: ProviderHealth
    last_error: str
    last_error_at: float | None
    last_ok_at: float | None
    blocked_until: float | None


class Health:
    """Mutable per-provider health, kept across reloads for a provider whose id stays."""

    def __init__(self) -> None:
        self.failures = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        self.last_ok_at: float | None = None
        self._open_until: float | None = None
        self._paused_until: float | None = None
        self.pause_reason = ""

    def record_ok(self, now: float) -> None:
        self.failures = 0
        self.last_ok_at = now
        self._open_until = None

    def record_failure(self, text: str, now: float, *, threshold: int, cooldown: float) -> None:
        self.failures += 1
        self.last_error = text
        self.last_error_at = now
        if self.failures >= threshold and cooldown > 0:
            self._open_until = now + cooldown

    def pause(self, until: float, reason: str) -> None:
        """Honour the provider's own request to back off."""
        if self._paused_until is None or until > self._paused_until:
            self._paused_until = until
            self.pause_reason = reason

    def blocked_until(self, now: float) -> float | None:
        """When the provider may be tried again, or ``None`` if it may be tried now."""
        until = max(self._open_until or 0.0, self._paused_until or 0.0)
        return until if until > now else None

    def why_blocked(self, now: float) -> str:
        if (self._paused_until or 0.0) > now:
            return f"paused at the provider's request: {self.pause_reason}"
        return f"cooling down after {plural(self.failures, 'failure')}: {self.last_error}"

    def view(self, now: float) -> HealthView:
        blocked = self.blocked_until(now)
        if blocked is not None:
            state = ProviderHealth.COOLDOWN
        elif self.failures:
            state = ProviderHealth.ERROR
        elif self.last_ok_at is not None:
            state = ProviderHealth.OK
        else:
            state = ProviderHealth.UNKNOWN
        return HealthView(state, self.last_error, self.last_error_at, self.last_ok_at, blocked)
