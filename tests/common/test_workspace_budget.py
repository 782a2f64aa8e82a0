"""The per-workspace budget (configuration changes, replays): a burst, then a rate."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import ResourceExhausted
from services.common.workspace_budget import WorkspaceBudget


def budget_of(rate: float, burst: int, **options: Any) -> WorkspaceBudget:
    """A budget of changes, as the registry's."""
    return WorkspaceBudget(
        rate,
        burst,
        doing="changes its configuration",
        rate_variable="EVENTFN_REGISTRY_CHANGES_PER_SECOND",
        burst_variable="EVENTFN_REGISTRY_CHANGES_BURST",
        **options,
    )


@given(
    st.lists(st.floats(min_value=0, max_value=2, allow_nan=False), min_size=1, max_size=80),
    st.floats(min_value=0.5, max_value=50),
    st.integers(min_value=1, max_value=10),
)
def test_changes_accepted_in_any_span_stay_within_burst_plus_rate(
    gaps: list[float], rate: float, burst: int
) -> None:
    now = [0.0]
    budget = budget_of(rate, burst, clock=lambda: now[0])
    accepted: list[float] = []
    for gap in gaps:
        now[0] += gap
        try:
            budget.take("ws_1")
        except ResourceExhausted as refused:
            assert refused.retry_after > 0
            continue
        accepted.append(now[0])
    for i, start in enumerate(accepted):
        for j in range(i, len(accepted)):
            assert j - i + 1 <= burst + rate * (accepted[j] - start) + 1e-6


def test_a_refused_change_goes_through_when_told() -> None:
    now = [0.0]
    budget = budget_of(2.0, 3, clock=lambda: now[0])
    for _ in range(3):
        budget.take("ws_1")
    with pytest.raises(ResourceExhausted) as refused:
        budget.take("ws_1")
    budget.take("ws_2")  # a neighbour's budget is its own
    now[0] += refused.value.retry_after
    budget.take("ws_1")


def test_no_limit_with_rate_zero_and_bad_settings_refused_at_start() -> None:
    budget = budget_of(0, 1)
    for _ in range(1000):
        budget.take("ws_1")
    with pytest.raises(ValueError, match="EVENTFN_REGISTRY_CHANGES_BURST"):
        budget_of(1.0, 0)


def test_one_given_back_can_be_taken_again_and_never_past_the_burst() -> None:
    now = [0.0]
    budget = budget_of(0.01, 2, clock=lambda: now[0])
    budget.take("ws_1")
    budget.give_back("ws_1")
    budget.give_back("ws_1")  # no more than the burst, however many come back
    budget.take("ws_1")
    budget.take("ws_1")
    with pytest.raises(ResourceExhausted):
        budget.take("ws_1")


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=2, allow_nan=False),
            st.floats(min_value=0.5, max_value=40, allow_nan=False),
        ),
        min_size=1,
        max_size=60,
    ),
    st.floats(min_value=0.5, max_value=50),
    st.integers(min_value=1, max_value=20),
)
def test_costs_accepted_in_any_span_stay_within_burst_plus_rate_plus_the_last_overshoot(
    takes: list[tuple[float, float]], rate: float, burst: int
) -> None:
    now = [0.0]
    budget = budget_of(rate, burst, clock=lambda: now[0])
    accepted: list[tuple[float, float]] = []
    for gap, cost in takes:
        now[0] += gap
        try:
            budget.take("ws_1", cost=cost)
        except ResourceExhausted as refused:
            assert refused.retry_after > 0
            continue
        accepted.append((now[0], cost))
    for i, (start, _) in enumerate(accepted):
        for j in range(i, len(accepted)):
            end, last = accepted[j]
            spent = sum(cost for _, cost in accepted[i : j + 1])
            assert spent <= burst + rate * (end - start) + max(0.0, last - burst) + 1e-6


def test_a_cost_over_the_burst_waits_for_a_full_bucket_then_owes_the_rest() -> None:
    now = [0.0]
    budget = budget_of(10.0, 100, clock=lambda: now[0])
    budget.take("ws_1", cost=1000)  # full: taken, 900 owed
    with pytest.raises(ResourceExhausted) as refused:
        budget.take("ws_1", cost=1)
    assert refused.value.retry_after == pytest.approx(90.1)
    now[0] += 90.0
    with pytest.raises(ResourceExhausted):
        budget.take("ws_1", cost=1000)  # needs the bucket full again
    now[0] += 10.0
    budget.take("ws_1", cost=1000)
    budget.give_back("ws_1", cost=1000)  # refused after it was counted: nothing owed
    budget.take("ws_1", cost=100)
