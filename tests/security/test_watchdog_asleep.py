"""The V8 workers' watchdog sleeps while no invocation is in flight. A hostile function tries
to run code then: work it leaves behind (timers, promise chains) when its invocation returns,
and a loop sent once the pool has been idle for a while."""

from __future__ import annotations

import asyncio
import time

import psutil

from services.runtime import OutcomeKind, RuntimePool
from tests.runtime.conftest import invoke, value_of

LEFT_BEHIND = """async function onTrack(e) {
  setTimeout(() => { for (;;) {} }, 20)
  Promise.resolve()
    .then(() => new Promise(ok => setTimeout(ok, 10)))
    .then(() => { for (;;) {} })
  return 'returned'
}"""


def _workers_cpu(pool: RuntimePool) -> float:
    """Return the CPU seconds the pool's live workers have used."""
    total = 0.0
    for w in pool._workers:
        if w is not None and not w.dead:
            times = psutil.Process(w.proc.pid).cpu_times()
            total += times.user + times.system
    return total


async def test_work_left_behind_by_an_invocation_never_runs_while_the_pool_is_idle(
    one_worker: RuntimePool,
) -> None:
    assert value_of(await invoke(one_worker, LEFT_BEHIND, timeout_s=5)) == "returned"
    before = _workers_cpu(one_worker)
    await asyncio.sleep(1.0)  # nothing in flight: the watchdog sleeps; a loop would spin here
    assert _workers_cpu(one_worker) - before < 0.3
    started = time.monotonic()
    assert value_of(await invoke(one_worker, "function onTrack() { return 'next' }")) == "next"
    assert time.monotonic() - started < 1.0


async def test_a_loop_sent_to_an_idle_pool_is_stopped_at_its_deadline(
    one_worker: RuntimePool,
) -> None:
    assert value_of(await invoke(one_worker, "function onTrack() { return 1 }")) == 1
    await asyncio.sleep(0.5)  # the watchdog is asleep when the loop comes
    started = time.monotonic()
    result = await invoke(one_worker, "function onTrack() { for (;;) {} }", timeout_s=0.5)
    assert (result.outcomes[0].kind, result.outcomes[0].error_type) == (
        OutcomeKind.RETRY,
        "Timeout",
    )
    assert time.monotonic() - started < 3
