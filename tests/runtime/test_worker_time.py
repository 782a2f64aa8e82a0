"""How long a tenant may keep V8 workers stalled before its functions are moved aside."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.runtime.worker_time import StallTally

TICK = 0.01  # the watchdog's


def seconds_to_quarantine(share: float, workers: int = 1, horizon: float = 600.0) -> float | None:
    """Charge a tenant stalling `workers` workers `share` of each second, tick by tick; return
    when it passes the limit (None: within `horizon`, never)."""
    tally = StallTally()
    now = 0.0
    while now < horizon:
        now += TICK
        if (now % 1.0) < share and tally.charge("ws_1", TICK * workers, now):
            return now
    return None


def test_a_tenant_stalling_a_worker_without_pause_is_moved_aside_within_seconds() -> None:
    alone = seconds_to_quarantine(1.0)
    assert alone is not None and 5.0 < alone < 7.0
    every_worker = seconds_to_quarantine(1.0, workers=2)
    assert every_worker is not None and every_worker < 3.0


def test_a_tenant_stalling_a_worker_150_ms_a_second_never_is() -> None:
    assert seconds_to_quarantine(0.15) is None


@given(st.lists(st.tuples(st.sampled_from(["ws_a", "ws_b"]), st.floats(0, 0.5)), max_size=200))
def test_one_tenants_stalls_never_count_for_another(charges: list[tuple[str, float]]) -> None:
    tally, alone = StallTally(), StallTally()
    now = 0.0
    for tenant, seconds in charges:
        now += 0.05
        passed = tally.charge(tenant, seconds, now)
        if tenant == "ws_a":
            assert passed == alone.charge(tenant, seconds, now)
