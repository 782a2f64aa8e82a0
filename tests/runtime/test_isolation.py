"""One function's infinite loop or memory bomb never delays or breaks another function."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

from services.runtime import InvocationResult, OutcomeKind, RuntimePool
from tests.eventually import eventually
from tests.runtime.conftest import invoke, pool_config, value_of

FAST = "async function onTrack(e) { return e.event }"


async def _latencies(
    pool: RuntimePool, count: int, until: asyncio.Future[Any] | None = None
) -> list[float]:
    out: list[float] = []
    for i in itertools.count():
        if i >= count and (until is None or until.done()):
            break
        started = time.monotonic()
        result = await invoke(pool, FAST, [{"type": "track", "event": i}], key="fast:1")
        assert value_of(result) == i
        out.append(time.monotonic() - started)
    return out


def in_flight(pool: RuntimePool, key: str) -> bool:
    """Tell whether an invocation of function `key` has been sent to a worker."""
    workers = [w for w in pool._workers if w is not None]
    return any(p.key == key for w in workers for p in w.inflight.values())


async def test_looping_function_does_not_delay_another(own_pool: RuntimePool) -> None:
    await _latencies(own_pool, 20)  # warm: the fast function's context exists
    # Another function takes the second worker, so the loop lands beside the fast function.
    await invoke(own_pool, FAST, key="other:1")
    baseline = statistics.median(await _latencies(own_pool, 50))

    async def three_loops() -> list[InvocationResult]:
        loop_code = "function onTrack() { while (true) {} }"
        calls = (invoke(own_pool, loop_code, key="loop:1", timeout_s=1.5) for _ in range(3))
        return list(await asyncio.gather(*calls))

    looping = asyncio.create_task(three_loops())
    # The loop is sent first: to the fast function's worker (tie).
    await eventually(lambda: in_flight(own_pool, "loop:1"), "the loop sent", interval=0.001)
    during = await _latencies(own_pool, 100, until=looping)
    results = await looping

    assert all(r.outcomes[0].error_type == "Timeout" for r in results)
    # The neighbour keeps its latency: no call waits for the loop's 1.5 s timeout.
    assert max(during) < 0.5, f"slowest call took {max(during):.3f} s"
    assert statistics.median(during) < max(10 * baseline, 0.02)


async def test_memory_bomb_does_not_break_another(own_pool: RuntimePool) -> None:
    bomb = "function onTrack() { const a = []; while (true) a.push(new Array(1e5).fill(1)) }"
    await _latencies(own_pool, 5)
    await invoke(own_pool, FAST, key="other:1")
    bombing = asyncio.create_task(invoke(own_pool, bomb, key="bomb:1", timeout_s=20))
    await eventually(lambda: in_flight(own_pool, "bomb:1"), "the bomb sent", interval=0.001)
    during = await _latencies(own_pool, 30, until=bombing)
    result = await bombing
    assert result.outcomes[0].kind == OutcomeKind.FAILURE
    assert result.outcomes[0].error_type == "MemoryLimitExceeded"
    assert max(during) < 1.0


async def test_a_worker_past_its_contexts_is_replaced_when_no_more_work_comes() -> None:
    # The watchdog sleeps while nothing is in flight: it replaces a worker past its limits
    # before it does, not at the next invocation.
    config = pool_config(workers=1, worker_max_contexts=4)
    async with RuntimePool(config) as pool:
        first = pool._workers[0]
        assert first is not None
        for i in range(6):
            result = await invoke(pool, FAST, [{"type": "track", "event": i}], key=f"idle:{i}")
            assert value_of(result) == i
        await eventually(lambda: first.dead, "the worker past its contexts replaced", seconds=10)
        replaced = pool._workers[0]
        assert replaced is not None and replaced is not first


async def test_a_worker_that_made_many_contexts_is_replaced_without_losing_work() -> None:
    # STPyV8 never frees a context's memory: a worker is replaced after N contexts, and
    # what it runs at that moment finishes there.
    config = pool_config(workers=1, worker_max_contexts=4, watchdog_interval_s=0.002)
    slow = "async function onTrack(e) { await new Promise(ok => setTimeout(ok, 300)); return e.i }"
    async with RuntimePool(config) as pool:
        first = pool._workers[0]
        assert first is not None
        in_flight = asyncio.create_task(invoke(pool, slow, [{"type": "track", "i": -1}]))
        results = [
            await invoke(pool, FAST, [{"type": "track", "event": i}], key=f"many:{i}")
            for i in range(12)
        ]
        assert [value_of(r) for r in results] == list(range(12))
        assert value_of(await in_flight) == -1
        # Past its contexts at a watchdog's look (every 100 ticks: later on a busy host).
        await eventually(
            lambda: first.dead and pool._workers[0] is not first,
            "the worker past its contexts replaced",
            seconds=10,
        )
