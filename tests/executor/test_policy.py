"""The executor's pure decisions: event rate, when to batch, connection health."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from eventfn.executor.v1 import executor_pb2 as pb
from services.executor.policy import BATCH_MIN_RATE, RateMeter, health, use_batch


def test_rate_is_events_per_second_over_the_window() -> None:
    meter = RateMeter(window=10)
    for second in range(10):
        meter.add(5, 1000.0 + second)
    assert meter.rate(1009.5) == 5.0
    assert meter.rate(1030.0) == 0.0, "old events leave the window"


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 1000)), max_size=50))
def test_rate_is_never_negative_nor_above_what_arrived(arrivals: list[tuple[float, int]]) -> None:
    meter = RateMeter(window=10)
    now = 0.0
    for offset, count in sorted(arrivals):
        now = offset
        meter.add(count, now)
    assert 0 <= meter.rate(now) <= sum(c for _, c in arrivals) / 10


def test_batching_needs_on_batch_and_volume() -> None:
    assert use_batch(True, BATCH_MIN_RATE)
    assert not use_batch(True, BATCH_MIN_RATE / 2), "too low a volume: single handlers"
    assert not use_batch(False, 1000.0), "no onBatch: single handlers"


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_health_follows_the_share_of_bad_outcomes(total: int, bad: int) -> None:
    bad = min(bad, total)
    got = health(total, bad)
    if total == 0:
        assert got == pb.HEALTH_UNSPECIFIED
    elif bad / total < 0.01:
        assert got == pb.HEALTH_HEALTHY
    elif bad / total <= 0.20:
        assert got == pb.HEALTH_DEGRADED
    else:
        assert got == pb.HEALTH_FAILING
