"""Who is blamed, and what it costs, when a worker is stopped for memory.

A kill blamed on an invocation quarantined its instance only: a workspace of many instances
killed the shared worker once per instance (13 kills of 20 bombs, 48 of 104 of a neighbour's
invocations lost and retried). A blamed kill now also charges the tenant nearly its whole
share of worker time, so a second one soon after sends the tenant to the quarantine worker,
and counts as a kill in a tally kept over minutes (kills half a minute apart passed the first).

Growth between crossings, beside other
invocations, is only suspected of the last invocation seen in V8; but once requests are out,
the host grows the worker too, for their bodies. A tenant filled a worker with memory kept in
its globals, then fetched bodies trickled by its own server: the growth was suspected of a
bystander busy in V8 meanwhile, whose events then failed for good (`MemoryLimitExceeded`) and
whose instance was quarantined, while the attacker's were only retried. With requests out,
nobody is blamed now: the worker is replaced, what runs on it finishes, and it is stopped
(every invocation on it retried or run again) only if it grows a quarter past its limit; its
likeliest grower, not counting what the host took for the bodies received, is set apart on
the quarantine worker for a minute (a function fetching once, then growing its worker by short
crossings, was never blamed and stopped shared worker after shared worker)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import pytest_asyncio

from services.runtime import RuntimePool
from services.runtime.pool import KILLS_HALF_LIFE_S, KILLS_LIMIT
from services.runtime.worker_time import HALF_LIFE_S, StallTally
from tests.runtime.conftest import invoke
from tests.security.conftest import Recorder, config

FILL = """const keep = [];
function onTrack() { const b = new Uint8Array(8 * 1024 * 1024); b.fill(7); keep.push(b) }"""


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[RuntimePool]:
    """One worker whose RSS limit (400 MB) is reached before the host's; loopback allowed."""
    small = dataclasses.replace(config(workers=1, allow=("127.0.0.1/32",)), worker_rss_limit_mb=400)
    async with RuntimePool(small) as pool:
        yield pool


@contextlib.asynccontextmanager
async def victim_running(pool: RuntimePool, code: str, copies: int) -> AsyncIterator[Counter[str]]:
    """Run a victim's function over and over, `copies` invocations at once, meanwhile; yield how
    its invocations ended, counted."""
    stop = asyncio.Event()
    ended: Counter[str] = Counter()

    async def again() -> None:
        while not stop.is_set():
            result = await invoke(pool, code, key="ins_victim:v:1", tenant="ws_victim")
            ended[result.outcomes[0].error_type or "delivered"] += 1

    running = [asyncio.create_task(again()) for _ in range(copies)]
    await asyncio.sleep(0.3)
    try:
        yield ended
    finally:
        stop.set()
        await asyncio.gather(*running)


async def test_growth_while_requests_are_out_blames_no_bystander(
    pool: RuntimePool, recorder: Recorder
) -> None:
    worker = pool._workers[0]
    assert worker is not None
    while worker.rss() < 300 * 2**20:  # the attacker's memory, kept in its globals
        await invoke(pool, FILL, key="ins_fill:v:1", tenant="ws_attacker")
    bystander = f"""async function onTrack() {{
      for (let i = 0; i < 6; i++) {{
        const t = Date.now(); while (Date.now() - t < 20) {{}}
        await fetch('{recorder.url}/hold?s=0.5');
      }}
    }}"""
    streamer = f"""async function onTrack() {{
      const slow = (i) => fetch('{recorder.url}/trickle?mb=9&s=3&i=' + i);
      const got = await Promise.all([0, 1, 2].map(slow));
      let n = 0; for (const r of got) n += (await r.arrayBuffer()).byteLength; return n
    }}"""
    async with victim_running(pool, bystander, 1) as ended:
        await asyncio.gather(
            *(
                invoke(pool, streamer, key=f"ins_s{i}:v:1", tenant="ws_attacker", timeout_s=10)
                for i in range(6)
            )
        )
    assert worker.retiring or worker.dead, "the worker never passed its limit: no attack made"
    assert "MemoryLimitExceeded" not in ended, ended
    assert not pool._quarantined("ins_victim:v:1"), "the bystander was quarantined"


BOMB = """const keep = [];
async function onTrack() {
  for (let i = 0; i < 12; i++) {
    const b = new Uint8Array(16 * 1024 * 1024); b.fill(1); keep.push(b);
    await new Promise((r) => setTimeout(r, 1));
  }
}"""


async def test_a_tenant_whose_instances_get_the_worker_stopped_is_quarantined(
    recorder: Recorder,
) -> None:
    neighbour = f"async function onTrack() {{ await fetch('{recorder.url}/hold?s=0.3') }}"
    async with (
        RuntimePool(config(workers=1, allow=("127.0.0.1/32",))) as pool,
        victim_running(pool, neighbour, 4) as ended,
    ):
        for i in range(8):  # a new instance each time: each one's own quarantine is new
            await invoke(pool, BOMB, key=f"ins_bomb{i}:v:1", tenant="ws_attacker")
    assert pool._quarantined("ins_bomb_next:v:1", "ws_attacker"), "the tenant was not"
    assert not pool._quarantined("ins_victim:v:1", "ws_victim")
    # Four neighbours in flight lost at each kill of the shared worker: two blamed kills (and
    # perhaps one of a worker replaced past its limit and growing on), not one a bomb.
    assert ended["WorkerLost"] <= 3 * 4, ended


async def test_a_tenant_stopping_the_worker_every_half_minute_is_set_aside() -> None:
    # Kills just over half a minute apart never passed the stall tally: rotating instances, a
    # tenant stopped the shared worker twice a minute for ever. Its kills are counted over
    # minutes too now. Time runs twenty times faster here (both tallies' half-lives).
    async with RuntimePool(config(workers=1)) as pool:
        pool._stalls = StallTally(half_life_s=HALF_LIFE_S / 20)
        pool._kills = StallTally(half_life_s=KILLS_HALF_LIFE_S / 20, limit_s=KILLS_LIMIT)
        for i in range(3):
            if i:
                await asyncio.sleep(2.5)  # 50 s scaled: the stall tally's charge is gone
            await invoke(pool, BOMB, key=f"ins_bomb{i}:v:1", tenant="ws_attacker")
        assert pool.restarts.get("memory", 0) >= 3
        assert pool._quarantined("ins_bomb_next:v:1", "ws_attacker"), "the tenant was not"


async def test_a_function_growing_its_worker_after_a_fetch_is_set_apart(
    pool: RuntimePool, recorder: Recorder
) -> None:
    # With a request out, growth is nobody's for sure: a function that fetched once, then
    # grew its worker by short crossings, was never blamed, and stopped the shared worker at
    # each of its invocations (8 of 8), its neighbours' invocations lost each time.
    bomb = BOMB.replace("{\n", f"{{\n  await fetch('{recorder.url}/ok');\n", 1).replace(
        "i < 12", "i < 40"
    )
    neighbour = f"async function onTrack() {{ await fetch('{recorder.url}/hold?s=0.3') }}"
    async with victim_running(pool, neighbour, 2) as ended:
        for _ in range(6):
            await invoke(pool, bomb, key="ins_bomb:v:1", tenant="ws_attacker", timeout_s=10)
    assert pool._quarantined("ins_bomb:v:1", "ws_attacker"), "the grower runs beside others"
    assert not pool._quarantined("ins_victim:v:1", "ws_victim")
    assert ended["WorkerLost"] <= 2 * 2, ended  # one stop of the shared worker, or two
