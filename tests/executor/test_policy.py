"""The executor's pure decisions: event rate, when to batch, where each event goes, what each
outcome becomes, connection health."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventfn_api.executor.v1 import executor_pb2 as pb
from services.executor.policy import (
    BATCH_MIN_RATE,
    HANDLER_OF_TYPE,
    RateMeter,
    disposition,
    handler_for,
    health,
    to_on_batch,
    use_batch,
)
from services.runtime import HANDLER_NAMES, OutcomeKind

SINGLE_HANDLERS = sorted(set(HANDLER_NAMES) - {"onBatch"})
ORDER = [pb.HEALTH_HEALTHY, pb.HEALTH_DEGRADED, pb.HEALTH_FAILING]


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


def test_each_type_names_its_handler_whatever_its_case() -> None:
    assert handler_for({"type": "track"}) == "onTrack"
    assert handler_for({"type": "Identify"}) == "onIdentify"
    assert handler_for({"type": "DELETE"}) == "onDelete"
    assert handler_for({"type": "purchase"}) is None
    assert handler_for({"type": 3}) is None
    assert handler_for({}) is None
    assert handler_for(["track"]) is None
    assert set(HANDLER_OF_TYPE.values()) == set(SINGLE_HANDLERS)


def test_an_on_batch_only_function_gets_every_event_even_at_low_volume() -> None:
    handlers = frozenset({"onBatch"})
    for handler in [*SINGLE_HANDLERS, None]:
        assert to_on_batch(handler, handlers, batching=False)


def test_at_low_volume_a_single_handler_takes_its_type_and_on_batch_the_rest() -> None:
    handlers = frozenset({"onTrack", "onBatch"})
    assert not to_on_batch("onTrack", handlers, batching=False)
    assert to_on_batch("onIdentify", handlers, batching=False)
    assert to_on_batch(None, handlers, batching=False), "an unknown type: onBatch, not a discard"
    assert to_on_batch("onTrack", handlers, batching=True), "with volume, everything batches"


@given(
    st.sampled_from([*SINGLE_HANDLERS, None]),
    st.sets(st.sampled_from(HANDLER_NAMES)),
    st.booleans(),
)
def test_an_event_goes_to_on_batch_exactly_when_it_must(
    handler: str | None, handlers: set[str], batching: bool
) -> None:
    got = to_on_batch(handler, handlers, batching=batching)
    if "onBatch" not in handlers:
        assert not got, "without onBatch, single handlers (or EventNotSupported)"
    elif handler is None or handler not in handlers:
        assert got, "an event with no handler of its own goes to onBatch, never discarded"
    else:
        assert got == batching


def test_what_each_outcome_becomes() -> None:
    assert disposition(OutcomeKind.DELIVERED, 1) == "record"
    assert disposition(OutcomeKind.RETRY, 1) == "retry"
    assert disposition(OutcomeKind.FAILURE, 1) == "dead", "a failure is replayable after a fix"
    assert disposition(OutcomeKind.DISCARD, 1) == "record", "a discard by design stays a record"
    assert disposition(OutcomeKind.DISCARD, 2) == "dead", "a retried event keeps its history"


@given(st.sampled_from(list(OutcomeKind)), st.integers(1, 1000), st.integers(2, 1000))
def test_no_outcome_but_delivered_and_first_discards_is_only_recorded(
    kind: OutcomeKind, attempt: int, later: int
) -> None:
    only_recorded = disposition(kind, attempt) == "record"
    assert only_recorded == (
        kind == OutcomeKind.DELIVERED or (kind == OutcomeKind.DISCARD and attempt == 1)
    )
    # Past the first attempt, the attempt number no longer matters.
    assert disposition(kind, later) == disposition(kind, 2)


counts = st.integers(0, 10_000)


@pytest.mark.parametrize(
    ("delivered", "bad", "expected"),
    [
        (0, 0, pb.HEALTH_NO_EVENTS),  # no events, no verdict
        (100, 0, pb.HEALTH_HEALTHY),
        (100, 1, pb.HEALTH_HEALTHY),  # under 1 % retried or failed
        (99, 1, pb.HEALTH_DEGRADED),  # 1 % exactly
        (80, 20, pb.HEALTH_DEGRADED),  # up to 20 %
        (79, 21, pb.HEALTH_FAILING),
        (0, 1, pb.HEALTH_FAILING),
    ],
)
def test_health_at_the_edges_of_each_band(delivered: int, bad: int, expected: int) -> None:
    for retried, failed in ((bad, 0), (0, bad)):
        got = health(delivered=delivered, retried=retried, discarded=0, failed=failed)
        assert got == expected, (delivered, retried, failed)


@given(counts, counts, counts, counts, st.integers(1, 1000), st.integers(2, 50))
def test_health_follows_the_share_of_retried_and_failed(
    delivered: int, retried: int, discarded: int, failed: int, more: int, scale: int
) -> None:
    got = health(delivered=delivered, retried=retried, discarded=discarded, failed=failed)
    # Retried and failed weigh the same.
    moved = health(delivered=delivered, retried=0, discarded=discarded, failed=failed + retried)
    assert moved == got
    # A share, not a count: as many times more of everything reads the same.
    scaled = health(
        delivered=delivered * scale,
        retried=retried * scale,
        discarded=discarded * scale,
        failed=failed * scale,
    )
    assert scaled == got
    if got == pb.HEALTH_NO_EVENTS:
        return
    # More retried events never make it better; more delivered ones never make it worse.
    worse = health(delivered=delivered, retried=retried + more, discarded=discarded, failed=failed)
    better = health(delivered=delivered + more, retried=retried, discarded=discarded, failed=failed)
    assert ORDER.index(worse) >= ORDER.index(got) >= ORDER.index(better)


@given(counts, counts, counts, counts, st.integers(1, 10_000))
def test_discards_never_make_health_worse(
    delivered: int, retried: int, discarded: int, failed: int, more: int
) -> None:
    before = health(delivered=delivered, retried=retried, discarded=discarded, failed=failed)
    after = health(delivered=delivered, retried=retried, discarded=discarded + more, failed=failed)
    assert after != pb.HEALTH_NO_EVENTS, "discarded events are events"
    if before != pb.HEALTH_NO_EVENTS:
        assert ORDER.index(after) <= ORDER.index(before)


def test_a_template_that_skips_on_group_is_healthy() -> None:
    assert health(delivered=90, retried=0, discarded=10, failed=0) == pb.HEALTH_HEALTHY
    assert health(delivered=0, retried=0, discarded=10, failed=0) == pb.HEALTH_HEALTHY
