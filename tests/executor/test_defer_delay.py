"""How long a pack handed back for its instance's share waits before it comes again."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.executor.defer import (
    DEFER_MAX_SECONDS,
    DEFER_SECONDS,
    DEFER_STALLED_MAX_SECONDS,
    defer_delay,
)


@given(st.integers(min_value=-5, max_value=10**9), st.booleans())
def test_a_wait_is_bounded_and_never_shorter_than_the_last(deliveries: int, stalled: bool) -> None:
    wait = defer_delay(deliveries, stalled=stalled)
    assert DEFER_SECONDS <= wait <= (DEFER_STALLED_MAX_SECONDS if stalled else DEFER_MAX_SECONDS)
    assert defer_delay(deliveries + 1, stalled=stalled) >= wait
    assert defer_delay(deliveries, stalled=True) >= defer_delay(deliveries)


def test_a_long_backlog_comes_back_at_the_longest_wait_after_a_few_deliveries() -> None:
    # A stalled instance's packs cycle for as long as it stays over its share: the sooner they
    # reach the longest wait, the less the executors and NATS spend re-reading them.
    assert defer_delay(1) == DEFER_SECONDS
    reached = next(n for n in range(1, 100) if defer_delay(n) == DEFER_MAX_SECONDS)
    assert reached <= 8
    assert sum(defer_delay(n) for n in range(1, reached)) < 2 * DEFER_MAX_SECONDS


def test_a_stalled_instances_packs_wait_a_minute_at_first_and_up_to_ten() -> None:
    # Its new packs came back after 1, 2, 4 … s like a busy one's: seven deliveries in their
    # first minute (30,000 arriving over two minutes: 176,000 hand-backs, now 46,000).
    waits = [defer_delay(n, stalled=True) for n in range(1, 40)]
    assert min(waits) == DEFER_MAX_SECONDS
    assert max(waits) == 10 * DEFER_MAX_SECONDS
