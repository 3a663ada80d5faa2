"""Prometheus metrics, kept in a registry owned by the daemon (no global state).

The SMTP listener and the scheduler record events here; the admin app
serves ``/metrics`` from the same registry, adding the queue gauges it reads
from the spool at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter(
            "sluice_messages_received", "Messages accepted over SMTP (answered 250).", registry=r
        )
        self.received_bytes = Counter(
            "sluice_received_bytes", "Bytes of accepted messages.", registry=r
        )
        self.rejected = Counter(
            "sluice_messages_rejected",
            "Messages or sessions refused at SMTP time, by reason.",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "sluice_deliveries",
            "Recipient delivery attempts by provider and resulting state.",
            ["provider", "status"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "sluice_delivery_seconds",
            "Time to hand one message to a provider.",
            ["provider"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.bounces = Counter(
            "sluice_bounces",
            "Bounces recorded, by kind (hard, soft) and source (smtp: a provider's refusal; "
            "dsn: read from the bounce mailbox).",
            ["kind", "source"],
            registry=r,
        )
        self.suppressed = Counter(
            "sluice_suppressed_recipients",
            "Recipients not sent because they are on the suppression list, by the entry's source.",
            ["source"],
            registry=r,
        )
        self.suppressions_added = Counter(
            "sluice_suppressions_added",
            "Addresses put on the suppression list by the daemon (bounce threshold), by source.",
            ["source"],
            registry=r,
        )
        self.queue = Gauge(
            "sluice_queue_recipients",
            "Recipients in the spool by state (read at scrape time).",
            ["status"],
            registry=r,
        )
        self.outcomes_unrecorded = Gauge(
            "sluice_outcomes_unrecorded",
            "Attempts whose outcomes the spool could not record yet (a full disk), held in"
            " memory and written again; their recipients are not tried again meanwhile.",
            registry=r,
        )
        self.smtp_auth = Counter(
            "sluice_smtp_auth",
            "SMTP AUTH attempts by result: ok, failed (wrong user or password, answered 535"
            " after smtp.auth_failure_delay), locked (answered 421 and disconnected: too many"
            " failures from that address), unavailable (answered 454: an accept worker got no"
            " answer from the daemon's failure count).",
            ["result"],
            registry=r,
        )
        self.provider_up = Gauge(
            "sluice_provider_up",
            "1 when the provider's last attempt succeeded, 0 when it failed.",
            ["provider"],
            registry=r,
        )

    # The SMTP listener's events (``relay.inbound.listener.AcceptEvents``).
    def on_accept(self, size: int) -> None:
        self.received.inc()
        self.received_bytes.inc(size)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def on_auth(self, result: str) -> None:
        self.smtp_auth.labels(result).inc()
