"""Memory a function keeps in its globals between invocations. Each invocation stays under
the per-invocation limit, so the worker passing its own limit was only replaced; a replaced
worker finishes its invocations first, and the same function kept each one alive with an
invocation waiting out its timeout: replaced workers piled up (1.1 GB against a 256 MB worker
limit, and more with every cycle). Now one predecessor per slot finishes at a time: a slot
replaced again stops the one before (its invocations that sent requests are retried, the
others run again elsewhere)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from services.runtime import OutcomeKind, RuntimePool
from services.runtime.worker_handle import WorkerHandle
from tests.eventually import eventually
from tests.runtime.conftest import invoke
from tests.security.conftest import Recorder, config, recorder

__all__ = ["recorder"]

KEEPER = """
const held = [];
async function onTrack(event) {
  if (event.op === 'grow') {
    held.push(new Float64Array(5 * 1024 * 1024).fill(Math.random()));  // 40 MB, kept
    return held.length;
  }
  await new Promise((ok) => setTimeout(ok, event.ms));  // keeps its worker busy meanwhile
}"""
NEIGHBOUR = "async function onTrack() { return 'ok' }"


async def test_a_function_keeping_memory_does_not_pile_up_replaced_workers() -> None:
    # Each invocation keeps 40 MB, a third of its limit: a busy machine's watchdog missing the
    # sample between two of them sees 80 MB rise in the second, which at a 64 MB limit was
    # blamed (its instance quarantined, the cycles moved to the quarantine worker's slot).
    cfg = dataclasses.replace(config(workers=1), memory_limit_mb=128, worker_rss_limit_mb=256)
    async with RuntimePool(cfg) as pool:
        key = "ins_keeper:ver:1"
        holds = []
        slot_holders = {id(pool._workers[0])}
        for _ in range(4):
            hold = [{"type": "track", "op": "hold", "ms": 20_000}]
            holds.append(asyncio.ensure_future(invoke(pool, KEEPER, hold, key=key, timeout_s=30)))
            for _ in range(20):  # until its worker is replaced
                normal = pool._workers[0]
                grow = await invoke(pool, KEEPER, [{"type": "track", "op": "grow"}], key=key)
                # A slow machine's watchdog may see the worker pass its limit while the
                # array is filled: the invocation is stopped then, and the slot replaced too.
                outcome = grow.outcomes[0]
                assert outcome.kind == OutcomeKind.DELIVERED or (
                    outcome.error_type == "MemoryLimitExceeded"
                ), outcome
                if pool._workers[0] is not normal:
                    slot_holders.add(id(pool._workers[0]))
                    break
        # The slot's worker and one before it, while the holds (20 s) keep the others' work
        # going: those stopped are marked so once their process is reaped (later when busy).
        await eventually(
            lambda: [w.rss() >> 20 for w in live(pool)],
            "replaced workers past their limit stopped (MB of those left)",
            until=lambda left: len(left) <= 2,
            seconds=10,
        )
        neighbour = await invoke(pool, NEIGHBOUR, key="ins_neighbour:ver:1")
        for hold in holds:
            hold.cancel()
    assert len(slot_holders) >= 4  # each cycle grew the slot's worker past its limit
    assert neighbour.outcomes[0].kind == OutcomeKind.DELIVERED


def live(pool: RuntimePool) -> list[WorkerHandle]:
    return [w for w in [*pool._workers, *pool._retiring] if w is not None and not w.dead]


async def test_a_worker_replaced_for_its_contexts_finishes_its_invocations(
    recorder: Recorder,
) -> None:
    # Replaced for the number of contexts it made, not for its memory, a worker holds nothing
    # to stop it for: stopping it when its slot was replaced again retried an invocation that
    # had sent its request (a second delivery of it); leaving each such worker to finish let
    # them pile up, each with its contexts' memory. The slot is not replaced for its contexts
    # again while the one before finishes.
    cfg = dataclasses.replace(config(workers=1, allow=("127.0.0.1/32",)), worker_max_contexts=3)
    code = f"async function onTrack() {{ await fetch('{recorder.url}/hold?s=10&contexts') }}"
    async with RuntimePool(cfg) as pool:
        first = pool._workers[0]
        held = asyncio.ensure_future(invoke(pool, code, key="ins_held:ver:1", timeout_s=30))
        while not any("contexts" in p for p in recorder.paths()):
            await recorder.arrived.wait()
            recorder.arrived.clear()
        slot_holders: set[int] = set()
        most_alive = 0
        until = asyncio.get_running_loop().time() + 3
        for n in itertools.count():  # new contexts for 3 s, past the limit again and again
            if asyncio.get_running_loop().time() > until:
                break
            await invoke(pool, NEIGHBOUR, key=f"ins_n{n}:ver:1")
            if pool._workers[0] is not None:
                slot_holders.add(id(pool._workers[0]))
            most_alive = max(most_alive, len([w for w in pool._retiring if not w.dead]))
            await asyncio.sleep(0.02)
        assert first.retiring and not first.dead
        assert len(slot_holders - {id(first)}) == 1 and most_alive == 1  # replaced once
        result = await asyncio.wait_for(held, 15)
    assert result.outcomes[0].kind == OutcomeKind.DELIVERED
    assert sum("contexts" in p for p in recorder.paths()) == 1
