"""The memory ledger's charges, sample by sample (the pool's watchdog feeds it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.runtime.memory_ledger import MemoryLedger

MB = 1 << 20
LIMIT = 128 * MB


@given(st.lists(st.integers(0, 64), min_size=1, max_size=40), st.booleans())
def test_an_invocation_alone_is_charged_what_it_holds_across_its_awaits(
    steps_mb: list[int], awaits_between: bool
) -> None:
    """Each step allocates in a crossing of its own (sampled as it starts and once it has
    allocated), then (or not) awaits outside V8: the charge is the worker's growth since the
    watchdog first saw it, whatever the crossings."""
    base = 300 * MB
    ledger = MemoryLedger(base)
    ledger.observe(base, (7, 0), solo=7)  # it starts
    rss = base
    for crossing, step in enumerate(steps_mb, start=1):
        ledger.observe(rss, (7, crossing), solo=7)
        rss += step * MB
        ledger.observe(rss, (7, crossing), solo=7)
        if awaits_between:
            ledger.observe(rss, (0, 0), solo=7)
    held = rss - base
    assert ledger.over(7, LIMIT) == (held > LIMIT)


@given(st.lists(st.integers(-32, 64), min_size=1, max_size=40))
def test_memory_given_back_is_no_longer_charged(steps_mb: list[int]) -> None:
    base = 300 * MB
    ledger = MemoryLedger(base)
    ledger.observe(base, (7, 0), solo=7)
    rss = base
    for crossing, step in enumerate(steps_mb, start=1):
        rss = max(base, rss + step * MB)
        ledger.observe(rss, (7, crossing), solo=7)
    ledger.observe(base, (0, 0), solo=7)  # everything freed
    assert not ledger.over(7, 0)


@given(st.lists(st.integers(0, 64), min_size=1, max_size=40))
def test_growth_between_crossings_beside_a_neighbour_is_charged_to_no_one(
    steps_mb: list[int],
) -> None:
    """Two invocations in flight, neither in V8 at the samples: the growth cannot be told
    apart, so neither's limit counts it (it is only suspected, for the worker's own limit)."""
    base = 300 * MB
    ledger = MemoryLedger(base)
    rss = base
    for step in steps_mb:
        rss += step * MB
        ledger.observe(rss, (0, 0), solo=0)
    assert not ledger.over(7, 0) and not ledger.over(8, 0)


@given(st.lists(st.integers(0, 64), min_size=1, max_size=40))
def test_growth_while_it_waits_outside_v8_is_the_hosts(steps_mb: list[int]) -> None:
    """Between two samples outside V8 the worker grows for its fetch round (bodies bounded by
    the invocation's response budget): not charged to the invocation's limit."""
    base = 300 * MB
    ledger = MemoryLedger(base)
    ledger.observe(base, (7, 1), solo=7)
    ledger.observe(base, (0, 0), solo=7)
    rss = base
    for step in steps_mb:
        rss += step * MB
        ledger.observe(rss, (0, 0), solo=7)
    ledger.observe(rss, (7, 2), solo=7)
    assert not ledger.over(7, 0)


def test_growth_the_host_may_have_made_for_bodies_received_is_suspected_of_nobody() -> None:
    # A neighbour's fetched bodies (held, joined, encoded by the host) grew the worker while
    # a bystander was in V8: the growth was suspected of the bystander.
    base = 300 * MB
    ledger = MemoryLedger(base)
    ledger.observe(base, (7, 1), solo=0, received=0)
    ledger.observe(base + 30 * MB, (7, 2), solo=0, received=10 * MB)  # 40 MB the host's, at most
    assert ledger.suspect() == (0, 0)
    ledger.observe(base + 80 * MB, (7, 3), solo=0, received=10 * MB)  # 10 MB of them left
    assert ledger.suspect() == (7, 40 * MB)
