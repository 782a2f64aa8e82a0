"""Executor settings refused at start, with what to change."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.executor.settings import ExecutorSettings

DATABASE = "postgresql://eventfn@127.0.0.1:5432/eventfn"


def test_a_pending_bound_under_the_packs_in_flight_is_refused_naming_both_settings() -> None:
    with pytest.raises(ValidationError) as refused:
        ExecutorSettings(
            database_url=DATABASE,
            executor_max_inflight_packs=512,
            executor_consumer_max_pending=1000,
        )
    text = str(refused.value)
    assert "EVENTFN_EXECUTOR_CONSUMER_MAX_PENDING" in text
    assert "EVENTFN_EXECUTOR_MAX_INFLIGHT_PACKS" in text


@pytest.mark.parametrize("bound", [-1, 1024])
def test_no_bound_or_one_that_holds_twice_the_packs_in_flight_is_taken(bound: int) -> None:
    settings = ExecutorSettings(
        database_url=DATABASE, executor_max_inflight_packs=512, executor_consumer_max_pending=bound
    )
    assert settings.executor_consumer_max_pending == bound
