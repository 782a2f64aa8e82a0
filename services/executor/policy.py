"""Pure decisions of the executor: batching mode, event rate, connection health."""

from __future__ import annotations

from collections import deque

from eventfn.executor.v1 import executor_pb2

# The reference: under about one event per second, batching is not worth it.
BATCH_MIN_RATE = 1.0


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
        horizon = int(now) - self.window
        while self._buckets and self._buckets[0][0] <= horizon:
            self._buckets.popleft()
        return sum(c for _, c in self._buckets) / self.window


def use_batch(has_on_batch: bool, rate: float) -> bool:
    """Tell whether events should be collected for onBatch (else: single handlers at once)."""
    return has_on_batch and rate >= BATCH_MIN_RATE


def health(total: int, bad: int) -> int:
    """Classify an instance's health from events and bad outcomes over the last 15 minutes."""
    if total <= 0:
        return executor_pb2.HEALTH_UNSPECIFIED
    ratio = bad / total
    if ratio < 0.01:
        return executor_pb2.HEALTH_HEALTHY
    if ratio <= 0.20:
        return executor_pb2.HEALTH_DEGRADED
    return executor_pb2.HEALTH_FAILING
