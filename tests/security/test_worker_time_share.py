"""A tenant whose functions keep V8 workers busy without ever timing out. A loop of 0.9 s an
event, its timeout set to a minute, on two instances (as many as the workers), ten events at
a time each: no invocation was ever killed, so nothing was quarantined, both workers were
always inside the tenant's crossings, and a neighbour's one-line handler waited 35 to 68 s,
then ended as `WorkerCrashed` ("the function's worker process died") though no worker had
died: each move off a stalled worker counted as one of its six attempts. A move is no
attempt now, and a tenant that keeps workers stalled runs on the quarantine worker."""

from __future__ import annotations

import asyncio
import statistics
import time

from services.runtime import RuntimePool
from tests.runtime.conftest import invoke, own_pool

__all__ = ["own_pool"]

SPIN = "function onTrack() { const end = Date.now() + 900; while (Date.now() < end) {} }"
NEIGHBOUR = "function onTrack() { return 1 }"


async def test_a_tenant_keeping_every_worker_busy_is_moved_aside_and_no_neighbour_fails(
    own_pool: RuntimePool,
) -> None:
    attacker_outcomes: list[str] = []

    async def attacker(key: str) -> None:
        while True:
            result = await invoke(own_pool, SPIN, key=key, timeout_s=60, tenant="ws_spin")
            attacker_outcomes.append(result.outcomes[0].kind)

    spinning = [
        asyncio.create_task(attacker(f"ins_spin{i}:v1:1")) for i in range(2) for _ in range(10)
    ]
    waits: list[float] = []
    try:
        async with asyncio.timeout(90):
            for _ in range(12):
                started = time.monotonic()
                result = await invoke(
                    own_pool, NEIGHBOUR, key="ins_calm:v1:1", timeout_s=5, tenant="ws_calm"
                )
                waits.append(time.monotonic() - started)
                assert result.outcomes[0].kind == "delivered", result.outcomes[0]
                await asyncio.sleep(0.25)  # a steady trickle, as a neighbour's traffic is
    finally:
        for task in spinning:  # its invocations queued on the quarantine worker: not awaited
            task.cancel()
        await asyncio.gather(*spinning, return_exceptions=True)
    # The tenant moved aside within seconds (waits of 35 to 68 s before), then none at all.
    assert max(waits) < 10 and statistics.median(waits) < 0.3, waits
    assert "delivered" in attacker_outcomes  # moved aside, still served
    assert not own_pool.restarts  # and nothing was killed for it
