"""Properties of the retry backoff: delay bounds, the window, the jitter curve, clock skew."""

import math
import os
import random
import subprocess
import sys
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.retrier.backoff import (
    DEFAULT_MAX_NAK_DELAY,
    GiveUp,
    RetryAt,
    RetryPolicy,
    ceiling,
    decide,
    delay,
    nak_delay,
    rng_for,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)


class MaxRng:
    """Always draws the top of the range: the slowest schedule."""

    def randint(self, a: int, b: int) -> int:
        """Return ``b``."""
        return b


class ZeroRng:
    """Always draws zero: the fastest schedule."""

    def randint(self, a: int, b: int) -> int:
        """Return ``a``."""
        return a


@st.composite
def policies(draw: st.DrawFn, *, max_waits_per_window: int | None = None) -> RetryPolicy:
    """Draw a valid policy; optionally one whose window holds a bounded number of attempts."""
    window_us = draw(st.integers(1_000, 4 * 3600 * 10**6))
    # Every wait's ceiling is at least base, so this bounds how many attempts fit.
    min_base_us = 1 if max_waits_per_window is None else window_us // max_waits_per_window
    base_us = draw(st.integers(max(1, min_base_us), window_us))
    cap_us = draw(st.integers(max(base_us, window_us // 200), 2 * window_us))
    factor = draw(st.floats(1.0, 16.0, allow_nan=False) | st.sampled_from([1, 2, 3]))
    return RetryPolicy(
        base=timedelta(microseconds=base_us),
        factor=factor,
        cap=timedelta(microseconds=cap_us),
        window=timedelta(microseconds=window_us),
    )


def exact_ceiling_us(policy: RetryPolicy, attempts: int) -> Fraction:
    """Compute min(cap, base·factor^(attempts-1)) in µs with exact rational arithmetic."""
    curve = Fraction(policy.base // US) * Fraction(policy.factor) ** (attempts - 1)
    return min(Fraction(policy.cap // US), curve)


# --- policy ---------------------------------------------------------------------------------


def test_default_policy_matches_the_issue() -> None:
    policy = RetryPolicy()
    assert policy.base == timedelta(seconds=1)
    assert policy.factor == 2
    assert policy.cap == timedelta(minutes=10)
    assert policy.window == timedelta(hours=4)


def test_policy_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        RetryPolicy().base = timedelta(seconds=2)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base", timedelta(0)),
        ("base", timedelta(seconds=-1)),
        ("base", 1.0),
        ("factor", 0.5),
        ("factor", 0),
        ("factor", math.nan),
        ("factor", math.inf),
        ("factor", True),
        ("factor", "2"),
        ("cap", timedelta(milliseconds=999)),
        ("window", timedelta(0)),
        ("window", timedelta(hours=-4)),
        ("clock_skew_tolerance", timedelta(seconds=-1)),
    ],
)
def test_policy_rejects_invalid_parameter(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})


# --- delay ----------------------------------------------------------------------------------


@given(policy=policies(), attempts=st.integers(1, 300), seed=st.integers(0, 2**32))
def test_delay_lies_within_zero_and_the_capped_curve(
    policy: RetryPolicy, attempts: int, seed: int
) -> None:
    drawn = delay(policy, attempts, random.Random(seed))
    exact = exact_ceiling_us(policy, attempts)
    assert timedelta(0) <= drawn
    assert drawn // US <= exact
    assert drawn <= ceiling(policy, attempts) <= policy.cap


@given(policy=policies(), attempts=st.integers(1, 300))
def test_ceiling_is_the_capped_curve_to_the_microsecond(policy: RetryPolicy, attempts: int) -> None:
    exact = exact_ceiling_us(policy, attempts)
    got = ceiling(policy, attempts) // US
    # Float powers may round a part in 1e12 low; never high, never by more than that.
    assert got <= exact
    assert exact - got <= 1 + exact * Fraction(1, 10**12)


@given(policy=policies(), attempts=st.integers(10**5, 10**30))
def test_huge_attempt_counts_do_not_overflow(policy: RetryPolicy, attempts: int) -> None:
    # A factor this close to 1 takes more than 10**5 steps to climb to the cap.
    assume(policy.factor == 1 or policy.factor >= 1.01)
    expected = policy.base if policy.factor == 1 else policy.cap
    assert ceiling(policy, attempts) == expected
    assert timedelta(0) <= delay(policy, attempts, MaxRng()) == expected


def test_default_ceilings_double_from_one_second_up_to_ten_minutes() -> None:
    got = [ceiling(RetryPolicy(), n).total_seconds() for n in range(1, 13)]
    assert got == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


@pytest.mark.parametrize("attempts", [0, -1, True, 1.5, None])
def test_attempts_below_one_or_not_int_are_rejected(attempts: Any) -> None:
    with pytest.raises(ValueError, match="attempts"):
        delay(RetryPolicy(), attempts, random.Random(0))
    with pytest.raises(ValueError, match="attempts"):
        decide(RetryPolicy(), attempts=attempts, first_attempt_at=T0, now=T0, rng=ZeroRng())


@pytest.mark.parametrize("attempts", [1, 2, 5, 9, 10, 11, 30])
def test_mean_and_spread_of_many_draws_follow_full_jitter(attempts: int) -> None:
    policy = RetryPolicy()
    top = ceiling(policy, attempts).total_seconds()
    rng = random.Random(20250101 + attempts)
    draws = 20_000
    samples = [delay(policy, attempts, rng).total_seconds() / top for _ in range(draws)]
    # Uniform on [0, 1]: mean 1/2 (sd 1/sqrt(12)), a quarter below 1/4; 5 standard errors
    # apart, so "equal jitter" (mean 3/4) or no jitter would fail by a wide margin.
    assert abs(sum(samples) / draws - 0.5) <= 5 / math.sqrt(12 * draws)
    below_quarter = sum(s < 0.25 for s in samples) / draws
    assert abs(below_quarter - 0.25) <= 5 * math.sqrt(0.25 * 0.75 / draws)
    assert max(samples) <= 1.0


# --- decide ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    policy=policies(max_waits_per_window=500),
    seed=st.integers(0, 2**32),
    latency_us=st.lists(st.integers(0, 10**7), min_size=1, max_size=20),
)
def test_scheduled_attempts_never_pass_the_window(
    policy: RetryPolicy, seed: int, latency_us: list[int]
) -> None:
    rng = random.Random(seed)
    deadline = T0 + policy.window
    attempts, now = 1, T0 + timedelta(microseconds=latency_us[0])
    while True:
        decision = decide(policy, attempts=attempts, first_attempt_at=T0, now=now, rng=rng)
        if isinstance(decision, GiveUp):
            break
        assert now <= decision.due <= deadline
        assert decision.due - now <= policy.cap
        assert decision.attempt == attempts + 1
        assert decision.first_attempt_at == T0
        # The attempt runs when due, and fails again a little later.
        attempts = decision.attempt
        now = decision.due + timedelta(microseconds=latency_us[attempts % len(latency_us)])
    assert "window" in decision.reason


def test_boundary_due_exactly_at_the_deadline_is_still_retried() -> None:
    policy = RetryPolicy()
    deadline = T0 + policy.window
    now = deadline - policy.cap
    on_time = decide(policy, attempts=40, first_attempt_at=T0, now=now, rng=MaxRng())
    assert on_time == RetryAt(due=deadline, attempt=41, first_attempt_at=T0)
    late = decide(policy, attempts=40, first_attempt_at=T0, now=now + US, rng=MaxRng())
    assert isinstance(late, GiveUp)
    assert "attempt 41" in late.reason


def test_event_already_past_the_window_gives_up_even_with_a_zero_draw() -> None:
    now = T0 + timedelta(hours=5)
    decision = decide(RetryPolicy(), attempts=3, first_attempt_at=T0, now=now, rng=ZeroRng())
    assert isinstance(decision, GiveUp)


def test_first_attempt_far_in_the_future_is_clamped_to_now() -> None:
    policy = RetryPolicy()
    skewed = T0 + timedelta(days=3)
    first = decide(policy, attempts=1, first_attempt_at=skewed, now=T0, rng=ZeroRng())
    assert isinstance(first, RetryAt)
    assert first == RetryAt(due=T0, attempt=2, first_attempt_at=T0)
    # Carried forward, the clamped start ends the window 4 h after we first saw the event.
    past = T0 + policy.window + US
    last = decide(
        policy, attempts=2, first_attempt_at=first.first_attempt_at, now=past, rng=ZeroRng()
    )
    assert isinstance(last, GiveUp)


@pytest.mark.parametrize("ahead", [timedelta(0), timedelta(seconds=3), timedelta(seconds=5)])
def test_first_attempt_slightly_ahead_within_tolerance_is_kept(ahead: timedelta) -> None:
    decision = decide(RetryPolicy(), attempts=1, first_attempt_at=T0 + ahead, now=T0, rng=MaxRng())
    assert decision == RetryAt(
        due=T0 + timedelta(seconds=1), attempt=2, first_attempt_at=T0 + ahead
    )


@given(ahead=st.timedeltas(min_value=timedelta(seconds=5) + US, max_value=timedelta(days=3650)))
def test_any_skew_beyond_tolerance_bounds_the_window_from_now(ahead: timedelta) -> None:
    policy = RetryPolicy()
    decision = decide(policy, attempts=1, first_attempt_at=T0 + ahead, now=T0, rng=MaxRng())
    assert isinstance(decision, RetryAt)
    assert decision.first_attempt_at == T0


@pytest.mark.parametrize("field", ["first_attempt_at", "now"])
def test_naive_datetimes_are_rejected(field: str) -> None:
    times = {"first_attempt_at": T0, "now": T0, field: T0.replace(tzinfo=None)}
    with pytest.raises(ValueError, match=field):
        decide(RetryPolicy(), attempts=1, rng=ZeroRng(), **times)


def test_offsets_other_than_utc_are_compared_by_instant() -> None:
    plus_two = timezone(timedelta(hours=2))
    first = (T0 + timedelta(seconds=4)).astimezone(plus_two)
    decision = decide(RetryPolicy(), attempts=1, first_attempt_at=first, now=T0, rng=ZeroRng())
    assert isinstance(decision, RetryAt)
    assert decision.first_attempt_at == first


def test_decision_with_a_keyed_rng_is_the_same_on_every_redelivery() -> None:
    def once() -> object:
        rng = rng_for("instance-1:digest:attempt-7")
        return decide(RetryPolicy(), attempts=7, first_attempt_at=T0, now=T0, rng=rng)

    assert once() == once()


def test_keyed_rng_does_not_depend_on_the_process_hash_seed() -> None:
    code = "from services.retrier.backoff import rng_for; print(rng_for('k').random())"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {f"{rng_for('k').random()}\n"}
    assert rng_for("k").random() != rng_for("l").random()


# --- nak delay ------------------------------------------------------------------------------


@pytest.mark.parametrize("due", [T0 - timedelta(hours=1), T0 - US, T0])
def test_nak_delay_is_zero_once_due(due: datetime) -> None:
    assert nak_delay(due, T0) == 0.0


def test_nak_delay_waits_exactly_until_a_near_due_time() -> None:
    assert nak_delay(T0 + timedelta(seconds=42, microseconds=5), T0) == 42.000005


def test_nak_delay_is_bounded_so_long_waits_recheck() -> None:
    assert nak_delay(T0 + timedelta(hours=3), T0) == DEFAULT_MAX_NAK_DELAY.total_seconds()
    assert nak_delay(T0 + timedelta(hours=3), T0, max_delay=timedelta(seconds=30)) == 30.0


@pytest.mark.parametrize("max_delay", [timedelta(0), timedelta(seconds=-1)])
def test_nak_delay_rejects_a_non_positive_bound(max_delay: timedelta) -> None:
    with pytest.raises(ValueError, match="max_delay"):
        nak_delay(T0 + timedelta(seconds=1), T0, max_delay=max_delay)


def test_nak_delay_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="due"):
        nak_delay(T0.replace(tzinfo=None), T0)


@given(
    wait=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=5)),
    bound=st.timedeltas(min_value=timedelta(seconds=10), max_value=timedelta(minutes=10)),
)
def test_repeated_naks_land_exactly_on_the_due_time(wait: timedelta, bound: timedelta) -> None:
    due, now, naks = T0 + wait, T0, 0
    while (seconds := nak_delay(due, now, max_delay=bound)) > 0:
        assert seconds <= bound.total_seconds()
        now += timedelta(seconds=seconds)
        naks += 1
    assert now == due
    assert naks == -(-(wait // US) // (bound // US))
