"""Play the default 4-hour retry schedule on a manual clock; `pytest -s` shows the times."""

import random
import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.retrier.backoff import (
    DEFAULT_MAX_NAK_DELAY,
    Clock,
    GiveUp,
    RetryPolicy,
    decide,
    nak_delay,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
# Time one attempt takes to run and fail (invoke + fetch timeout), so attempts are not
# back to back even when the jitter draws zero.
ATTEMPT_DURATION = timedelta(milliseconds=250)


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime) -> None:
        """Start at ``start``."""
        self._now = start

    def __call__(self) -> datetime:
        """Return the current simulated time."""
        return self._now

    def advance(self, by: timedelta) -> None:
        """Move time forward by ``by``."""
        assert by >= timedelta(0)
        self._now += by


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt in the simulation."""

    number: int
    at: datetime
    waited: timedelta
    naks: int


@dataclass(frozen=True, slots=True)
class Run:
    """The outcome of one simulated event: its attempts and why retrying stopped."""

    attempts: list[Attempt]
    gave_up_at: datetime
    reason: str


def play(policy: RetryPolicy, clock: Clock, advance: ManualClock, seed: int) -> Run:
    """Fail every attempt of one event until the retrier gives up, as the service would."""
    rng = random.Random(seed)
    first = clock()
    attempts = [Attempt(number=1, at=first, waited=timedelta(0), naks=0)]
    while True:
        advance.advance(ATTEMPT_DURATION)  # the attempt fails; the event lands on RETRY
        failed_at = clock()
        decision = decide(
            policy, attempts=attempts[-1].number, first_attempt_at=first, now=failed_at, rng=rng
        )
        if isinstance(decision, GiveUp):
            return Run(attempts=attempts, gave_up_at=failed_at, reason=decision.reason)
        # Held in JetStream: nak with a bounded delay until due, re-checking in between.
        naks = 0
        while (seconds := nak_delay(decision.due, clock())) > 0:
            advance.advance(timedelta(seconds=seconds))
            naks += 1
        assert clock() == decision.due
        attempts.append(
            Attempt(number=decision.attempt, at=clock(), waited=clock() - failed_at, naks=naks)
        )


def simulate(seed: int, policy: RetryPolicy | None = None) -> Run:
    """Play one event from T0 with a fresh manual clock."""
    clock = ManualClock(T0)
    return play(policy or RetryPolicy(), clock, clock, seed)


def test_full_four_hour_default_schedule() -> None:
    policy = RetryPolicy()
    run = simulate(seed=7)
    deadline = T0 + policy.window

    print(f"\n{'attempt':>7}  {'at (since first)':>16}  {'waited':>10}  {'naks':>4}")
    for attempt in run.attempts:
        since = attempt.at - T0
        print(
            f"{attempt.number:>7}  {since!s:>16.14}  {attempt.waited.total_seconds():>9.1f}s"
            f"  {attempt.naks:>4}"
        )
    print(f"gave up at +{run.gave_up_at - T0}: {run.reason}")

    # Expected ≈ 1 + 10 ramp-up retries (≈ 8.5 min) + ≈ 46 capped ones (mean 5 min) ≈ 57;
    # the standard deviation is ≈ 4, so this range holds for any healthy seed.
    assert 40 <= len(run.attempts) <= 75
    assert [a.number for a in run.attempts] == list(range(1, len(run.attempts) + 1))
    assert all(a.waited <= policy.cap for a in run.attempts)
    # A wait of up to 10 min is held by at most two naks of at most 5 min.
    assert all(a.naks <= -(-policy.cap // DEFAULT_MAX_NAK_DELAY) for a in run.attempts)
    last = run.attempts[-1].at
    assert last <= deadline
    # Retrying stops only when the next draw (at most cap) overshoots: near the end.
    assert last >= deadline - policy.cap - ATTEMPT_DURATION
    assert "window" in run.reason


def test_schedule_over_many_seeds_stays_in_the_window_and_follows_the_curve() -> None:
    policy = RetryPolicy()
    deadline = T0 + policy.window
    runs = [simulate(seed) for seed in range(300)]
    counts = [len(run.attempts) for run in runs]
    for run in runs:
        assert deadline - policy.cap - ATTEMPT_DURATION <= run.attempts[-1].at <= deadline
    # Mean ≈ 57 attempts; a schedule without jitter (all waits at the cap) gives ≈ 34,
    # one with half-width jitter ≈ 43, so a wrong curve is far outside this band.
    assert 53 <= statistics.fmean(counts) <= 61
    print(
        f"\nattempts per event over 300 seeds: min {min(counts)}, max {max(counts)}, "
        f"mean {statistics.fmean(counts):.1f}"
    )


def test_short_window_by_configuration() -> None:
    policy = RetryPolicy(
        base=timedelta(milliseconds=10),
        cap=timedelta(milliseconds=200),
        window=timedelta(seconds=3),
    )
    run = simulate(seed=1, policy=policy)
    assert run.attempts[-1].at <= T0 + policy.window
    # Attempts take 250 ms each plus ≤ 200 ms waits: between 3 s / 450 ms and 3 s / 250 ms.
    assert 7 <= len(run.attempts) <= 13
