"""A hostile function spreads its memory over V8 crossings to escape the memory limit.

The per-invocation limit (128 MB) was measured per crossing: RSS growth was compared with the
RSS when the current crossing started. A handler that allocates 64 MB, awaits a timer (a new
crossing when it resumes) and repeats held 640 MB with outcome "delivered"; typed-array memory
lies outside V8's heap limit, so V8 did not stop it either. And a worker past its own RSS
limit (1 GB) was only retired, which waits for the invocation growing it: nothing stopped a
function short of the host running out of memory, and it was never quarantined.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.runtime import OutcomeKind, RuntimePool
from tests.runtime.conftest import invoke, value_of
from tests.security.conftest import config


def staircase(step_mb: int, steps: int) -> str:
    """A handler that allocates `step_mb` per crossing, `steps` times, holding it all."""
    return f"""async function onTrack() {{
      const held = [];
      for (let i = 0; i < {steps}; i++) {{
        held.push(new Float64Array({step_mb} * 131072).fill(Math.random()));
        await new Promise((ok) => setTimeout(ok, 0));
      }}
      return held.length * {step_mb};
    }}"""


def sleeper(ms: int) -> str:
    """A neighbour that only waits `ms` (in flight all along, sending nothing)."""
    return f"""async function onTrack() {{
      await new Promise((ok) => setTimeout(ok, {ms}));
      return 'slept';
    }}"""


@pytest.mark.parametrize(
    ("step_mb", "steps"), [(64, 10), (2, 320)], ids=["64MB-steps", "2MB-steps"]
)
async def test_memory_held_across_crossings_counts_against_the_limit(
    one_worker: RuntimePool, step_mb: int, steps: int
) -> None:
    worker = one_worker._workers[0]
    assert worker is not None
    key = f"staircase-{step_mb}:1"

    result = await invoke(one_worker, staircase(step_mb, steps), key=key, timeout_s=20)

    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type) == (OutcomeKind.FAILURE, "MemoryLimitExceeded"), (
        f"held {result.values} MB over {steps} crossings and ended {outcome.kind}"
    )
    assert worker.dead, "the worker holding the memory was not stopped"
    assert one_worker._quarantined(key), "the offender was not quarantined"


async def test_memory_freed_between_crossings_is_not_held(one_worker: RuntimePool) -> None:
    # 20 MB at a time, ten times: 200 MB allocated in all, never more than 20 MB held.
    code = """async function onTrack() {
      let total = 0;
      for (let i = 0; i < 10; i++) {
        let scratch = new Float64Array(20 * 131072).fill(i);
        total += scratch.length * 8 / 1048576;
        scratch = null;
        await new Promise((ok) => setTimeout(ok, 20));
      }
      return total;
    }"""
    worker = one_worker._workers[0]

    assert value_of(await invoke(one_worker, code, timeout_s=20)) == 200
    assert one_worker._workers[0] is worker and one_worker.restarts == {}


async def test_a_neighbours_memory_is_not_charged_to_an_invocation(
    one_worker: RuntimePool,
) -> None:
    # Each holds less than the limit across its awaits; together they hold more than it.
    holder = """async function onTrack() {
      const held = new Float64Array(%d * 131072).fill(1);
      await new Promise((ok) => setTimeout(ok, %d));
      return held.length * 8 / 1048576;
    }"""
    first = asyncio.create_task(invoke(one_worker, holder % (80, 1500), key="first:1"))
    await asyncio.sleep(0.5)  # the first holds its 80 MB before the neighbour starts
    second = await invoke(one_worker, holder % (100, 300), key="second:1")

    assert value_of(second) == 100
    assert value_of(await first) == 80
    assert one_worker.restarts == {}


@pytest_asyncio.fixture
async def small_workers() -> AsyncIterator[RuntimePool]:
    """A pool of one worker whose RSS limit (400 MB) is reached before the host's."""
    small = dataclasses.replace(config(workers=1), worker_rss_limit_mb=400)
    async with RuntimePool(small) as pool:
        yield pool


async def test_an_invocation_growing_its_worker_past_the_limit_is_stopped(
    small_workers: RuntimePool,
) -> None:
    # Beside a neighbour in flight, growth between short crossings cannot be charged to
    # either for sure; the worker's own limit still stops the one that grew it.
    worker = small_workers._workers[0]
    assert worker is not None
    neighbour = asyncio.create_task(invoke(small_workers, sleeper(2000), key="sleeper:1"))
    await asyncio.sleep(0.2)
    grower = invoke(small_workers, staircase(2, 400), key="grower:1", timeout_s=20)

    result, slept = await asyncio.gather(grower, neighbour)

    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.error_type) == (OutcomeKind.FAILURE, "MemoryLimitExceeded"), (
        f"held {result.values} MB in a worker limited to 400 MB and ended {outcome.kind}"
    )
    assert worker.dead, "the worker past its limit was not stopped"
    assert small_workers._quarantined("grower:1"), "the offender was not quarantined"
    assert not small_workers._quarantined("sleeper:1"), "the neighbour was quarantined"
    assert value_of(slept) == "slept"  # it had sent nothing: run again on the new worker
