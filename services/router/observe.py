"""The router's metrics: events received, stored and filtered, requests refused, and the
executors' backlog (the router is always up, so the signal is there with no executor)."""

from __future__ import annotations

from opentelemetry.metrics import Meter


class RouterMetrics:
    """The router's counters."""

    def __init__(self, meter: Meter) -> None:
        self._received = meter.create_counter(
            "eventfn.router.events.received", unit="{event}", description="Events received"
        )
        self._stored = meter.create_counter(
            "eventfn.router.events.stored", unit="{event}", description="Events stored"
        )
        self._filtered = meter.create_counter(
            "eventfn.router.events.filtered",
            unit="{event}",
            description="Events kept from an instance by its filters or the integrations object",
        )
        self._rejected = meter.create_counter(
            "eventfn.router.requests.rejected",
            unit="{request}",
            description="Requests refused, by reason (503s: unavailable)",
        )

    def received(self, source_id: str, events: int) -> None:
        """Count events of a request whose write key is known."""
        self._received.add(events, {"eventfn.source_id": source_id})

    def stored(self, source_id: str, events: int) -> None:
        """Count events of a request once they are on disk."""
        self._stored.add(events, {"eventfn.source_id": source_id})

    def filtered(self, instance_id: str, events: int) -> None:
        """Count events kept from an instance."""
        self._filtered.add(events, {"eventfn.instance_id": instance_id})

    def rejected(self, reason: str) -> None:
        """Count a refused request."""
        self._rejected.add(1, {"reason": reason})
