"""Decide when a failed event is retried: capped exponential backoff with full jitter.

Pure logic, no I/O: the caller passes the time (``now``) and the random source, so the
retrier service uses the real clock and a real RNG while tests play hours in microseconds.

Attempt numbering: ``attempts`` is how many delivery attempts were already made (the first
delivery counts, so a message on ``RETRY`` has ``attempts >= 1``). The wait after attempt
``n`` is drawn uniformly from ``[0, min(cap, base * factor ** (n - 1))]`` ("full jitter"), so
the first retry waits at most ``base``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = [
    "DEFAULT_MAX_NAK_DELAY",
    "Clock",
    "Decision",
    "GiveUp",
    "RetryAt",
    "RetryPolicy",
    "Rng",
    "ceiling",
    "decide",
    "delay",
    "nak_delay",
    "rng_for",
    "utc_now",
]

_MICROS = timedelta(microseconds=1)

# Bounded so a long wait is re-examined now and then (shortened window, deleted instance,
# corrected clock) instead of being invisible for the whole wait; 5 min keeps the cost of
# re-checks low (100k pending retries -> ~330 redeliveries/s at worst).
DEFAULT_MAX_NAK_DELAY = timedelta(minutes=5)

Clock = Callable[[], datetime]
"""A source of the current time (timezone-aware); injected so tests control time."""


def utc_now() -> datetime:
    """Return the current UTC time (the real clock the service injects)."""
    return datetime.now(UTC)


class Rng(Protocol):
    """The one method of ``random.Random`` the backoff draws from."""

    def randint(self, a: int, b: int) -> int:
        """Return a uniform random integer in ``[a, b]``, both ends included."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Backoff parameters for one deployment or one destination instance."""

    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=10)
    window: timedelta = timedelta(hours=4)
    # NTP-synced hosts still disagree by a little; within this, a first-attempt time in the
    # future is taken as is rather than rewritten.
    clock_skew_tolerance: timedelta = timedelta(seconds=5)

    def __post_init__(self) -> None:
        """Reject parameters that would make the schedule meaningless."""
        for name in ("base", "cap", "window", "clock_skew_tolerance"):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise ValueError(f"RetryPolicy.{name} must be a timedelta, got {value!r}")
        if self.base < _MICROS:
            raise ValueError(f"RetryPolicy.base must be at least 1 µs, got {self.base}")
        if (
            isinstance(self.factor, bool)
            or not isinstance(self.factor, int | float)
            or not math.isfinite(self.factor)
            or self.factor < 1
        ):
            raise ValueError(
                f"RetryPolicy.factor must be a finite number >= 1, got {self.factor!r}; "
                "use 1 for a constant delay"
            )
        if self.cap < self.base:
            raise ValueError(
                f"RetryPolicy.cap ({self.cap}) must be >= base ({self.base}); raise cap or "
                "lower base"
            )
        if self.window <= timedelta(0):
            raise ValueError(f"RetryPolicy.window must be positive, got {self.window}")
        if self.clock_skew_tolerance < timedelta(0):
            raise ValueError(
                f"RetryPolicy.clock_skew_tolerance must be >= 0, got {self.clock_skew_tolerance}"
            )


@dataclass(frozen=True, slots=True)
class RetryAt:
    """Deliver attempt number ``attempt`` at ``due``.

    ``first_attempt_at`` is the window start actually used (differs from the message's when
    it was clamped for clock skew); the caller must carry it forward in the republished
    message, or a clamped window would restart on every hop and never end.
    """

    due: datetime
    attempt: int
    first_attempt_at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop retrying; ``reason`` says why, for the dead letter."""

    reason: str


Decision = RetryAt | GiveUp
"""What to do with a retry message."""


def _micros(value: timedelta) -> int:
    return value // _MICROS


def _ceiling_micros(policy: RetryPolicy, attempts: int) -> int:
    base = _micros(policy.base)
    cap = _micros(policy.cap)
    exponent = attempts - 1
    # factor ** exponent overflows a float for large exponents; when the curve is at
    # least e times past the cap, it is the cap, and below that the power is finite.
    if exponent * math.log(policy.factor) > math.log(cap / base) + 1:
        return cap
    return min(cap, math.floor(base * float(policy.factor) ** exponent))


def _check_attempts(attempts: int) -> None:
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(
            f"attempts must be an int >= 1 (the first delivery counts), got {attempts!r}"
        )


def _check_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (use UTC), got naive {value}")


def ceiling(policy: RetryPolicy, attempts: int) -> timedelta:
    """Return the largest wait after attempt ``attempts``: min(cap, base·factor^(attempts-1))."""
    _check_attempts(attempts)
    return timedelta(microseconds=_ceiling_micros(policy, attempts))


def delay(policy: RetryPolicy, attempts: int, rng: Rng) -> timedelta:
    """Draw the wait after attempt ``attempts``, uniform in ``[0, ceiling]`` (full jitter)."""
    _check_attempts(attempts)
    # Integer microseconds: exact, and never a hair above the ceiling from float rounding.
    return timedelta(microseconds=rng.randint(0, _ceiling_micros(policy, attempts)))


def decide(
    policy: RetryPolicy,
    *,
    attempts: int,
    first_attempt_at: datetime,
    now: datetime,
    rng: Rng,
) -> Decision:
    """Schedule the attempt after ``attempts`` failed ones, or give up past the window.

    ``now`` is when the last attempt failed. To get the same answer on every redelivery of
    one ``RETRY`` message, pass a fixed time (the message's stream timestamp) and
    ``rng_for(<dedupe id>)``; or compute once and store ``due`` in the message.

    Raises ``ValueError`` for ``attempts < 1`` or naive datetimes (a malformed message).
    """
    _check_attempts(attempts)
    _check_aware("first_attempt_at", first_attempt_at)
    _check_aware("now", now)
    start = first_attempt_at
    # A first-attempt time in the future comes from a producer whose clock runs ahead.
    # Trusted, it would stretch the window past 4 h of real time (unbounded for a badly
    # wrong clock); clamped to now, the window is at most 4 h from when we saw the event.
    if first_attempt_at - now > policy.clock_skew_tolerance:
        start = now
    deadline = start + policy.window
    due = now + delay(policy, attempts, rng)
    if due > deadline:
        return GiveUp(
            reason=(
                f"retry window of {policy.window} from first attempt at {start.isoformat()} "
                f"is over: attempt {attempts + 1} would be due at {due.isoformat()}, after "
                f"{deadline.isoformat()} ({attempts} attempts made)"
            )
        )
    return RetryAt(due=due, attempt=attempts + 1, first_attempt_at=start)


def nak_delay(
    due: datetime, now: datetime, *, max_delay: timedelta = DEFAULT_MAX_NAK_DELAY
) -> float:
    """Return the seconds to pass to ``msg.nak(delay=...)``; 0.0 means due now, republish.

    Capped at ``max_delay`` so a long wait comes back for a re-check before it is due.
    """
    _check_aware("due", due)
    _check_aware("now", now)
    if max_delay <= timedelta(0):
        raise ValueError(f"max_delay must be positive, got {max_delay}")
    remaining = due - now
    if remaining <= timedelta(0):
        return 0.0
    return min(remaining, max_delay).total_seconds()


def rng_for(key: str) -> random.Random:
    """Return an RNG seeded from ``key``, so one message always draws the same jitter."""
    # hashlib, not hash(): str hashes are salted per process, and the draw must be the same
    # in every retrier replica and after a restart.
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return random.Random(seed)
