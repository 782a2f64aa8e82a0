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

A pack of an instance getting through its packs comes again sooner when the instance's pace
says a slot is free first (`Pacer`): the doubling alone kept a burst's packs away while slots
stood empty.

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
# What is kept of an instance (or workspace) handed back goes once it has not been for this
# long, longer than any wait: kept for good, every instance ever handed back grew the process.
FORGET_SECONDS = 2 * DEFER_STALLED_MAX_SECONDS


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

    def forget_idle(self, now: float) -> None:
        """Drop the instances with nothing counted over the last two windows."""
        for instance_id, meters in list(self._meters.items()):
            if not any(meter.count(now) for meter in meters):
                del self._meters[instance_id]

    def __len__(self) -> int:
        return len(self._meters)


# How much a new pack duration moves an instance's estimate (an exponential moving average).
PACE_WEIGHT = 0.2


class Pacer:
    """Spread handed-back packs over the time the packs in flight take to make room, so each
    comes again about when a slot is free rather than at its next doubling.

    The doubling alone left slots empty while a burst's packs waited out 8, 16, 32 s: 40
    packs of 100 one-fetch events on two executors of 4 slots took 17.7 s (6.0 s paced). A
    pack's wait is the doubling's or less: the reserved time ahead (packs handed back and not
    due yet) plus one pack's duration over the slots, when that is shorter. A pace is kept
    per instance, or per workspace when the workspace's share is what is full (its instances
    share those slots: paced each on its own, K instances came back K times too often).

    Packs are handed back only while the slots are full, so they come again no faster than
    packs are got through: a pack's duration counts at least the time since the last one
    settled (a pace measured on fast packs, slots then held by slow ones, brought a backlog
    back every millisecond while nothing ran). Only what was handed back is tracked (settles
    of others cost one look-up), as `Stalls` does, and only until it has not been for
    FORGET_SECONDS (`forget_idle`).
    """

    def __init__(self) -> None:
        # Per instance or workspace: seconds a pack takes (average; None until one settled
        # after it was first handed back) and when one last settled.
        self._took: dict[str, tuple[float, float] | None] = {}
        self._reserved: dict[str, float] = {}  # when its last paced pack is due
        self._seen: dict[str, float] = {}  # when one of its packs was last handed back

    def settled(self, keys: tuple[str, ...], seconds: float, now: float) -> None:
        """Count a pack (of an instance and its workspace: `keys`) run to its end after
        `seconds` in flight, at `now`."""
        for key in keys:
            if key not in self._took:
                continue
            took = self._took[key]
            average = seconds if took is None else took[0] + PACE_WEIGHT * (seconds - took[0])
            self._took[key] = (average, now)

    def wait(self, key: str, now: float, slots: int, longest: float) -> float:
        """Return the wait for one more handed-back pack of `key` (an instance or workspace
        running `slots` packs at once): `longest` (the doubling's) unless its pace says a
        slot is free sooner."""
        self._seen[key] = now
        took = self._took.setdefault(key, None)
        if took is None:  # nothing settled since it was first handed back: no pace yet
            return longest
        average, last = took
        per_pack = max(average, now - last) / max(slots, 1)
        due = max(self._reserved.get(key, now), now) + per_pack
        if due - now >= longest:
            return longest
        self._reserved[key] = due
        return due - now

    def forget_idle(self, now: float) -> None:
        """Drop the keys not handed back for FORGET_SECONDS (their next pack starts afresh)."""
        for key, seen in list(self._seen.items()):
            if now - seen > FORGET_SECONDS:
                del self._seen[key]
                self._took.pop(key, None)
                self._reserved.pop(key, None)

    def __len__(self) -> int:
        return len(self._seen)
