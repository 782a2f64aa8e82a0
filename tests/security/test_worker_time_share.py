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

import orjson
import pytest

from services.runtime import RuntimePool
from services.runtime import pool as pool_module
from services.runtime.preview import run_preview
from tests.runtime.conftest import invoke, own_pool, pool_config

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
    # The tenant moved aside within seconds (waits of 35 to 68 s before; up to 10.6 s while
    # its tally fills on a machine running the suite's two processes), then none at all.
    assert max(waits) < 20 and statistics.median(waits) < 0.3, waits
    assert "delivered" in attacker_outcomes  # moved aside, still served
    assert not own_pool.restarts  # and nothing was killed for it


async def test_busy_previews_send_only_the_workspaces_previews_aside(own_pool: RuntimePool) -> None:
    """A member allowed previews only (Functions Admin of one function): two previews of 3.5 s,
    under the preview timeout, sent every instance of its workspace to the quarantine worker
    for five minutes, functions it has no right on among them."""
    busy = "function onTrack() { const end = Date.now() + 3500; while (Date.now() < end) {} }"
    event = orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": "m"})
    for _ in range(2):
        ran = await run_preview(own_pool, busy, event, {}, workspace="ws_a")
        assert ran.outcome == "delivered"
    assert own_pool._quarantined("preview-ws_a:next", "ws_a")  # its next preview runs aside
    assert not own_pool._quarantined("ins_prod:ver_1:1", "ws_a")  # the workspace's instances do not


async def test_an_invocation_moved_too_often_is_retried_never_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each move gives an invocation a fresh deadline: without a bound, one moved again and
    again never ended. Past the bound it is retried (it never ran), not failed."""
    monkeypatch.setattr(pool_module, "_MAX_MOVES", 1)
    async with RuntimePool(pool_config(workers=1)) as pool:
        spin = asyncio.ensure_future(invoke(pool, SPIN, key="ins_spin:v1:1", timeout_s=5))
        await asyncio.sleep(0.005)  # queued behind it before the worker counts as stalled
        moved = await invoke(pool, NEIGHBOUR, key="ins_calm:v1:1", timeout_s=5)
        await spin
    assert (moved.outcomes[0].kind, moved.outcomes[0].error_type) == ("retry", "WorkerBusy")


async def test_loading_a_quarantined_tenants_code_runs_aside_too(own_pool: RuntimePool) -> None:
    """Loading code runs its top level: a quarantined tenant's new instance loaded on the
    shared workers (and its stalls there counted to no tenant)."""
    own_pool._quarantine["tenant ws_spin"] = time.monotonic() + 60
    await own_pool.handlers("ins_new:v1:1", NEIGHBOUR, "ws_spin")
    assert own_pool._affinity["ins_new:v1:1"] == own_pool.config.workers  # the quarantine's
