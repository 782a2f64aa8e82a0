"""Telling a stalled instance (its packs come back, it gets through none) from a busy one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.executor.defer import STALL_WINDOW_SECONDS, Stalls

MINUTE = STALL_WINDOW_SECONDS
START = 1_000.0


def _cycle(stalls: Stalls, instance: str, handed_back: int, settled: int, at: float) -> None:
    for _ in range(handed_back):
        stalls.handed_back(instance, at)
    for _ in range(settled):
        stalls.settled(instance, at)


def test_an_instance_whose_backlog_cycles_while_it_settles_almost_nothing_is_stalled() -> None:
    stalls = Stalls()
    _cycle(stalls, "stuck", handed_back=5_000, settled=12, at=START)
    _cycle(stalls, "neighbour", handed_back=0, settled=500, at=START)
    assert stalls.stalled("stuck", START + 1)
    assert not stalls.stalled("neighbour", START + 1)


def test_a_busy_instance_getting_through_its_backlog_is_not_stalled() -> None:
    stalls = Stalls()
    # 150,000 packs waiting, coming back 2,500 a second; it settles 160 a second.
    _cycle(stalls, "busy", handed_back=2_500 * 30, settled=160 * 30, at=START)
    assert not stalls.stalled("busy", START + 30)


def test_a_burst_first_pass_is_not_a_stall() -> None:
    stalls = Stalls()
    _cycle(stalls, "burst", handed_back=900, settled=0, at=START)
    assert not stalls.stalled("burst", START)


def test_a_stall_ends_once_the_instance_settles_and_its_packs_stop_coming_back() -> None:
    stalls = Stalls()
    _cycle(stalls, "stuck", handed_back=5_000, settled=0, at=START)
    assert stalls.stalled("stuck", START + MINUTE / 2)
    _cycle(stalls, "stuck", handed_back=0, settled=10, at=START + MINUTE * 1.5)
    assert stalls.stalled("stuck", START + MINUTE * 1.5)  # the last window still counts
    assert not stalls.stalled("stuck", START + MINUTE * 2.6)


@given(
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=500),
    st.floats(min_value=0, max_value=10 * MINUTE),
)
def test_what_is_counted_more_than_two_windows_ago_is_forgotten(
    handed_back: int, settled: int, later: float
) -> None:
    stalls = Stalls()
    _cycle(stalls, "any", handed_back=handed_back, settled=settled, at=START)
    if later >= 2 * MINUTE:
        assert not stalls.stalled("any", START + later)
    elif stalls.stalled("any", START + later):
        assert handed_back >= 1_000 and handed_back > 100 * settled
