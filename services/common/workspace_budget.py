"""How fast a workspace may do something costly to every tenant: a token bucket per workspace.

`burst` at once (a script setting up hundreds of instances is not slowed), then `rate` a
second. The registry counts configuration changes (each is applied by every router, executor
and retrier of the deployment, about 11 ms of CPU in all per change on a 2-core machine: one
member changing things in a loop would load every tenant's data path); the retrier counts
replays (each scans the instance's dead letters and is kept a week); the router counts the
bytes each source's requests store (an event is stored once per instance it is routed to),
keyed by source rather than workspace. Each replica keeps its own buckets.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from services.common.errors import ResourceExhausted

# Buckets kept before the full ones (workspaces idle long enough) are forgotten.
MAX_BUCKETS = 10_000


class WorkspaceBudget:
    """Per-workspace token buckets; `rate` 0 means no limit.

    `doing` words what is counted for the refusal ("makes changes"), `amount` writes a
    number of what is counted ("3 MiB"), and the two variables are the settings an operator
    changes the budget with.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        doing: str,
        rate_variable: str,
        burst_variable: str,
        amount: Callable[[float], str] = "{:g}".format,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(
                f"{rate_variable} must be 0 (no limit) or more and {burst_variable} at least "
                f"1, not {rate:g} and {burst}"
            )
        self._rate = rate
        self._burst = float(burst)
        self._doing = doing
        self._amount = amount
        self._variables = f"{burst_variable}, {rate_variable}"
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # workspace -> (tokens, when)

    def take(
        self, workspace_id: str, member_id: str = "", *, cost: float = 1.0, who: str = ""
    ) -> None:
        """Count `cost` of a workspace's (of one of its members', with `member_id`: a bucket of
        its own), or raise ResourceExhausted saying when to retry; `who` names the workspace
        in it for callers not to be told its id.

        A cost over the burst is taken from a full bucket, which it leaves owing the rest:
        what is done at once is never refused for good, and the rate holds over time.
        """
        if not self._rate:
            return
        key = f"{workspace_id}/{member_id}" if member_id else workspace_id
        now = self._clock()
        tokens, when = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - when) * self._rate)
        needed = min(cost, self._burst)
        if tokens < needed:
            wait = (needed - tokens) / self._rate
            if not who:
                who = f"member {member_id} of workspace" if member_id else "workspace"
                who = f"{who} {workspace_id}"
            raise ResourceExhausted(
                f"{who} {self._doing} faster than allowed "
                f"({self._amount(self._burst)} at once, then {self._amount(self._rate)} a "
                f"second: {self._variables}); nothing was done: retry in {wait:.1f} s",
                retry_after=wait,
            )
        if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (tokens - cost, now)

    def give_back(self, workspace_id: str, member_id: str = "", *, cost: float = 1.0) -> None:
        """Return what was taken for a call then refused (it did nothing): a script retrying a
        mistake spends nothing more than its checks."""
        key = f"{workspace_id}/{member_id}" if member_id else workspace_id
        if self._rate and key in self._buckets:
            tokens, when = self._buckets[key]
            self._buckets[key] = (min(self._burst, tokens + cost), when)

    def _forget_full(self, now: float) -> None:
        full = [
            ws
            for ws, (tokens, when) in self._buckets.items()
            if tokens + (now - when) * self._rate >= self._burst
        ]
        for ws in full:
            del self._buckets[ws]
