"""Whose functions have held V8 workers in long crossings lately: a decayed tally per tenant.

A crossing longer than the stall mark keeps its worker from every other function. The pool
moves other work off such a worker, but a tenant whose functions stall workers all the time
(a loop just under its timeout, on as many instances as there are workers) kept every worker
stalled, and its neighbours waited tens of seconds. The watchdog charges the tenant of each
stalled crossing the time it ran past the mark; a tally halves every `half_life_s`, and a
tenant past `limit_s` is sent to the quarantine worker (a tenant stalling one worker without a
pause gets there in about 6 s; one stalling a worker for 150 ms a second never does).
"""

from __future__ import annotations

import math

HALF_LIFE_S = 10.0
LIMIT_S = 5.0
# Tallies kept before those decayed to nothing are forgotten.
MAX_TALLIES = 1000
_NOTHING_S = 0.01


class StallTally:
    """Seconds each tenant's crossings ran past the stall mark, decayed with time."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, limit_s: float = LIMIT_S) -> None:
        self._rate = math.log(2) / half_life_s
        self._limit = limit_s
        self._tallies: dict[str, tuple[float, float]] = {}  # tenant -> (seconds, as of)

    def charge(self, tenant: str, seconds: float, now: float) -> bool:
        """Add `seconds` to a tenant's tally at `now`; tell whether it passed the limit (its
        tally then starts again from nothing)."""
        value = self._value(tenant, now) + seconds
        if value > self._limit:
            self._tallies.pop(tenant, None)
            return True
        if len(self._tallies) >= MAX_TALLIES and tenant not in self._tallies:
            self._tallies = {
                t: (v, w) for t, (v, w) in self._tallies.items() if self._value(t, now) > _NOTHING_S
            }
        self._tallies[tenant] = (value, now)
        return False

    def _value(self, tenant: str, now: float) -> float:
        value, when = self._tallies.get(tenant, (0.0, now))
        return value * math.exp(-self._rate * (now - when))
