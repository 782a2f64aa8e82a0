"""The router's metrics: events received, stored and filtered, requests refused, and the
executors' backlog (the router is always up, so the signal is there with no executor)."""

from __future__ import annotations

from opentelemetry.metrics import Meter

from services.common.metrics import Owner, Tally


class RouterMetrics:
    """The router's counters."""

    def __init__(
        self,
        meter: Meter,
        source_owner: Owner | None = None,
        instance_owner: Owner | None = None,
    ) -> None:
        """`source_owner` and `instance_owner` tell the workspace of one, None once it is gone
        (see `Tally`)."""
        self._received = Tally(
            meter,
            "eventfn.router.events.received",
            unit="{event}",
            description="Events received",
            attributes=("eventfn.source_id",),
            owner=source_owner,
        )
        self._stored = Tally(
            meter,
            "eventfn.router.events.stored",
            unit="{event}",
            description="Events stored",
            attributes=("eventfn.source_id",),
            owner=source_owner,
        )
        self._filtered = Tally(
            meter,
            "eventfn.router.events.filtered",
            unit="{event}",
            description="Events kept from an instance by its filters or the integrations object",
            attributes=("eventfn.instance_id",),
            owner=instance_owner,
        )
        self._rejected = Tally(
            meter,
            "eventfn.router.requests.rejected",
            unit="{request}",
            description="Requests refused, by reason (503s: unavailable)",
            attributes=("reason",),
        )

    def received(self, source_id: str, events: int) -> None:
        """Count events of a request whose write key is known."""
        self._received.add(events, source_id)

    def stored(self, source_id: str, events: int) -> None:
        """Count events of a request once they are on disk."""
        self._stored.add(events, source_id)

    def filtered(self, instance_id: str, events: int) -> None:
        """Count events kept from an instance."""
        self._filtered.add(events, instance_id)

    def rejected(self, reason: str) -> None:
        """Count a refused request."""
        self._rejected.add(1, reason)
