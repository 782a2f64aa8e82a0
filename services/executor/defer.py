"""When a pack handed back for its instance's share (or because its work failed) comes again.

It comes again after DEFER_SECONDS, twice that after its next delivery, and so on up to
DEFER_MAX_SECONDS: a long backlog is not re-read every few seconds. (Growing by a second a
delivery up to 30 s, 15,000 packs of a stalled instance came back ≈ 540 times a second after 4
minutes, ≈ 5–9 % of an executor's core and 3–5 % of the NATS server's; doubling up to 120 s,
≈ 125 a second, 2–5 % and 1–2 %.) A minute at most while the instance gets through its packs,
so that a burst's handed-back packs wait little longer than it takes.

An instance that gets through almost none of them (its handler waits out its timeout) is
stalled: its packs then wait from DEFER_MAX_SECONDS up to DEFER_STALLED_MAX_SECONDS. A backlog
of N packs comes back N/60 times a second otherwise, and the NATS server's cost grows faster
than that (a minute at most: 60,000 packs, 8 % of its core; 150,000, 38 %, beside 20 % of the
executor's). With ten minutes, 150,000 came back 325 times a second: 9 % and 6 %.

Packs handed back together come back together, in waves. Spreading their waits at random cost
the NATS server six times the CPU in the same harness (48 % of a core against 8 % for 60,000).
"""

from __future__ import annotations

from services.executor.policy import RateMeter

DEFER_SECONDS = 1.0
DEFER_MAX_SECONDS = 60.0
DEFER_STALLED_MAX_SECONDS = 600.0
# An instance is stalled when, over the last two windows, its packs were handed back
# more than STALL_RATIO times as often as it settled one, and at least STALL_MIN_HANDBACKS
# times (a burst's first pass hands back many packs at once).
STALL_WINDOW_SECONDS = 60.0
STALL_RATIO = 100
STALL_MIN_HANDBACKS = 1000


def defer_delay(deliveries: int, *, stalled: bool = False) -> float:
    """Return how long a pack handed back for its instance's share waits, after `deliveries`
    deliveries so far: when its instance is stalled, a minute at least (its new packs came
    back seven times in that minute: 30,000 arriving over two minutes were handed back 176,000
    times, now 46,000) and up to ten."""
    wait = DEFER_SECONDS * 2.0 ** min(max(deliveries, 1) - 1, 32)
    if stalled:
        return min(max(wait, DEFER_MAX_SECONDS), DEFER_STALLED_MAX_SECONDS)
    return min(wait, DEFER_MAX_SECONDS)


class Stalls:
    """Count, per instance handed back lately, its packs handed back and those it settled over
    the last two windows, to tell a stalled instance from a busy one."""

    def __init__(self, window: float = STALL_WINDOW_SECONDS) -> None:
        self._seconds = round(2 * window)
        # Per instance: (handed back, settled). Settles are counted only once an instance has
        # been handed back: the others' settles need no meter (one look-up each, no more).
        self._meters: dict[str, tuple[RateMeter, RateMeter]] = {}

    def handed_back(self, instance_id: str, now: float) -> None:
        """Count one of the instance's packs handed back."""
        meters = self._meters.get(instance_id)
        if meters is None:
            meters = self._meters[instance_id] = (
                RateMeter(self._seconds),
                RateMeter(self._seconds),
            )
        meters[0].add(1, now)

    def settled(self, instance_id: str, now: float) -> None:
        """Count one of the instance's packs run to its end (any outcome)."""
        meters = self._meters.get(instance_id)
        if meters is not None:
            meters[1].add(1, now)

    def stalled(self, instance_id: str, now: float) -> bool:
        """Tell whether the instance's packs come back far more often than it settles one."""
        meters = self._meters.get(instance_id)
        if meters is None:
            return False
        handed_back, settled = (meter.count(now) for meter in meters)
        return handed_back >= STALL_MIN_HANDBACKS and handed_back > STALL_RATIO * settled
