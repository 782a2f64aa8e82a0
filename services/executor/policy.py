"""Pure decisions of the executor: batching mode, where each event goes, what each outcome
becomes, connection health."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from typing import Literal

from eventfn_api.executor.v1 import executor_pb2
from services.runtime import OutcomeKind

# The reference: under about one event per second, batching is not worth it.
BATCH_MIN_RATE = 1.0
ON_BATCH = "onBatch"
# The single-event handler of each event type (the runtime lower-cases `type` the same way).
HANDLER_OF_TYPE = {
    "track": "onTrack",
    "identify": "onIdentify",
    "page": "onPage",
    "screen": "onScreen",
    "group": "onGroup",
    "alias": "onAlias",
    "delete": "onDelete",
}

Disposition = Literal["record", "retry", "dead"]


class RateMeter:
    """Events per second over a sliding window of whole seconds."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._buckets: deque[list[int]] = deque()  # [second, count], oldest first

    def add(self, count: int, now: float) -> float:
        """Account `count` events arriving at `now` (monotonic seconds); return the rate."""
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])
        return self.rate(now)

    def rate(self, now: float) -> float:
        """Return events per second over the window ending at `now`."""
        return self.count(now) / self.window

    def count(self, now: float) -> int:
        """Return the events of the window ending at `now`."""
        horizon = int(now) - self.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        return sum(c for _, c in self._buckets)


def use_batch(has_on_batch: bool, rate: float) -> bool:
    """Tell whether events should be collected for onBatch (else: single handlers at once)."""
    return has_on_batch and rate >= BATCH_MIN_RATE


def handler_for(event: object) -> str | None:
    """Return the single-event handler an event's `type` calls (None: no type names one)."""
    if not isinstance(event, dict):
        return None
    kind = event.get("type")
    return HANDLER_OF_TYPE.get(kind.lower()) if isinstance(kind, str) else None


def to_on_batch(handler: str | None, handlers: Collection[str], *, batching: bool) -> bool:
    """Tell whether an event goes to onBatch rather than to its single-event handler.

    With enough volume every event of a function with onBatch does. Below it, an event
    still does when the function has no single-event handler for its type: onBatch with
    a short batch is better than EventNotSupported for an event the function can take.
    """
    if ON_BATCH not in handlers:
        return False
    return batching or handler is None or handler not in handlers


def disposition(kind: OutcomeKind, attempt: int) -> Disposition:
    """Decide what an event's outcome becomes: a record only, a retry, or a dead letter.

    Retryable outcomes go to RETRY. Failures (thrown errors other than the four classes,
    invalid onBatch results, limits passed) go to DEAD at once, replayable after a fix.
    Discards by design (EventNotSupported, InvalidEventPayload, ValidationError, invalid
    settings, 4xx statuses) are the function's verdict and stay records, except on a retry,
    where the event already has a history worth keeping.
    """
    if kind == OutcomeKind.RETRY:
        return "retry"
    if kind == OutcomeKind.FAILURE:
        return "dead"
    if kind == OutcomeKind.DISCARD and attempt > 1:
        return "dead"
    return "record"


def health(
    *, delivered: int, retried: int, discarded: int, failed: int
) -> executor_pb2.Health.ValueType:
    """Classify an instance's health from its outcomes over the last 15 minutes.

    Retried and failed events count against it; discarded ones (by design: an event type
    the function does not handle, a payload it rejects) count as events, not against it.
    """
    total = delivered + retried + discarded + failed
    if total <= 0:
        return executor_pb2.HEALTH_NO_EVENTS
    ratio = (retried + failed) / total
    if ratio < 0.01:
        return executor_pb2.HEALTH_HEALTHY
    if ratio <= 0.20:
        return executor_pb2.HEALTH_DEGRADED
    return executor_pb2.HEALTH_FAILING
