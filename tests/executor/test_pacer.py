"""Handed-back packs paced to come again as their instance makes room, not all at once."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.executor.defer import (
    DEFER_MAX_SECONDS,
    DEFER_SECONDS,
    FORGET_SECONDS,
    Pacer,
    Stalls,
    defer_delay,
)


def paced(took: float, now: float = 0.0) -> Pacer:
    """A pacer that has seen one instance handed back, then settle packs of `took` seconds,
    the last at `now`."""
    pacer = Pacer()
    pacer.wait("ins", 0.0, 2, DEFER_SECONDS)
    for _ in range(20):
        pacer.settled(("ins", "ws"), took, now)
    return pacer


def test_an_instance_with_no_pack_settled_since_it_was_handed_back_waits_the_doubling() -> None:
    pacer = Pacer()
    pacer.settled(("ins",), 0.1, 0.0)  # before it was ever handed back: not tracked
    assert [pacer.wait("ins", 0.0, 2, defer_delay(n)) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_a_burst_comes_back_a_slot_at_a_time_then_at_the_doubling() -> None:
    # 2 slots, 0.2 s a pack: a slot frees every 0.1 s; the doubling (a minute after a few
    # deliveries) kept slots empty while a burst's packs waited it out.
    pacer = paced(0.2, now=10.0)
    waits = [pacer.wait("ins", 10.0, 2, DEFER_MAX_SECONDS) for _ in range(700)]
    assert waits[:3] == pytest.approx([0.1, 0.2, 0.3])
    assert waits[598] == pytest.approx(59.9)
    assert waits[600:] == [DEFER_MAX_SECONDS] * 100
    # What the doubling would say is never exceeded: a first delivery waits at most 1 s.
    assert pacer.wait("ins", 10.0, 2, DEFER_SECONDS) == DEFER_SECONDS


def test_time_passing_frees_what_was_reserved() -> None:
    pacer = paced(0.2)
    for _ in range(50):
        pacer.wait("ins", 0.0, 2, DEFER_MAX_SECONDS)
    pacer.settled(("ins",), 0.2, 100.0)
    assert pacer.wait("ins", 100.0, 2, DEFER_MAX_SECONDS) == pytest.approx(0.1)


def test_a_pace_is_no_faster_than_packs_settle() -> None:
    # Fast packs measured, then slow ones hold the slots: nothing settles for 10 s. The old
    # pace (5 ms a pack) brought the backlog back every few milliseconds while nothing ran.
    pacer = paced(0.005)
    assert pacer.wait("ins", 10.0, 2, DEFER_MAX_SECONDS) == pytest.approx(5.0)
    assert pacer.wait("ins", 10.0, 2, DEFER_MAX_SECONDS) == pytest.approx(10.0)


def test_a_workspace_full_is_paced_on_its_own_time() -> None:
    # Its instances share its slots: each paced alone, K instances came back K times as often.
    pacer = Pacer()
    pacer.wait("ws", 0.0, 4, DEFER_SECONDS)
    for _ in range(20):
        pacer.settled(("ins_a", "ws"), 0.4, 0.0)
    waits = [pacer.wait("ws", 0.0, 4, DEFER_MAX_SECONDS) for _ in range(3)]
    assert waits == pytest.approx([0.1, 0.2, 0.3])


@given(
    st.floats(min_value=0.001, max_value=30.0),
    st.integers(min_value=1, max_value=512),
    st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=5.0), st.integers(min_value=1, max_value=12)),
        max_size=200,
    ),
)
def test_paced_packs_come_back_no_faster_than_slots_free(
    took: float, slots: int, handbacks: list[tuple[float, int]]
) -> None:
    pacer = paced(took)
    now, dues = 0.0, []
    for step, deliveries in handbacks:
        now += step
        pacer.settled(("ins",), took, now)  # packs settle as often as it is handed one back
        longest = defer_delay(deliveries)
        wait = pacer.wait("ins", now, slots, longest)
        assert 0 < wait <= longest
        if wait < longest:
            dues.append(now + wait)
    # Packs due before the doubling are spaced by a pack's time over the slots at least.
    gaps = [b - a for a, b in itertools.pairwise(dues)]
    assert all(gap >= took / slots * (1 - 1e-9) for gap in gaps)


def test_what_is_kept_of_instances_handed_back_goes_once_they_are_idle() -> None:
    # Kept for good, every instance ever handed back grew the executor (about 2 KB each):
    # a tenant creating instances, each handed back once, grew it without end.
    pacer, stalls = Pacer(), Stalls()
    for i in range(10_000):
        pacer.wait(f"gone-{i}", 0.0, 2, DEFER_SECONDS)
        stalls.handed_back(f"gone-{i}", 0.0)
    busy = paced(0.2, now=0.0)
    busy.wait("ins", FORGET_SECONDS, 2, DEFER_MAX_SECONDS)
    for i in range(10_000):
        busy.wait(f"gone-{i}", 0.0, 2, DEFER_SECONDS)
    pacer.forget_idle(FORGET_SECONDS)  # not yet
    assert len(pacer) == 10_000
    stalls.forget_idle(FORGET_SECONDS)
    assert len(stalls) == 0
    busy.forget_idle(FORGET_SECONDS + 1.0)
    assert len(busy) == 1, "only the instance handed back lately is kept"
    # And it is still paced: its next pack comes when a slot frees, not at the doubling.
    now = FORGET_SECONDS + 1.0
    busy.settled(("ins", "ws"), 0.2, now)
    assert busy.wait("ins", now, 2, DEFER_MAX_SECONDS) < 1.0
