"""The executor took the packs it pulled one after another, and taking a pack of an instance
whose context is new waited for its script to load (the handler look-up runs the function's
top-level code). A tenant whose script spends just under its timeout at load (nothing is
killed) held every other tenant's events on the executor that long, once per new context:
per instance it creates, per configuration change, per version (three such instances: a
neighbour's event took 8.9 s). A pack now waits for its code to load in a task of its own."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, sink, start_platform
from tests.pipeline.test_delivery import batch_body, send
from tests.registry.conftest import Registry, make_source, registry

__all__ = ["registry", "sink"]

VICTIM = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/v', {method: 'POST', body: JSON.stringify(event)})
}
"""
# Three seconds of top-level work: under the default 5 s timeout, so nothing is killed.
SLOW_LOAD = """
const until = Date.now() + 3000; while (Date.now() < until) {}
async function onTrack() {}
"""


async def neighbour(victim: Platform) -> Platform:
    """Another workspace with a source of its own, on the same router and executor."""
    workspace, owner = await victim.registry.workspace("Slow loader")
    src = await make_source(victim.registry, owner, "hostile")
    await victim.router.watcher.wait_until(lambda v: src.write_key in v.sources_by_write_key)
    return Platform(
        victim.registry,
        victim.router,
        victim.executor,
        victim.http,
        owner,
        src.id,
        src.write_key,
        workspace,
    )


async def test_a_slow_loading_script_holds_no_other_tenants_events(
    registry: Registry, nats_url: str, sink: Sink
) -> None:
    async with AsyncExitStack() as stack:
        # Three V8 workers: the loads take two, the neighbour's context keeps its own.
        platform = await start_platform(registry, nats_url, stack, executor_workers=3)
        await platform.instance(VICTIM, sink.url)
        await send(platform, batch_body(1))  # the victim's context is loaded
        await sink.wait_for(1)
        hostile = await neighbour(platform)
        for _ in range(2):
            await hostile.instance(SLOW_LOAD, "http://unused.invalid")
        taken = platform.executor.consumer.packs
        await send(hostile, batch_body(1, 1000))  # one pack for each hostile instance
        await eventually(
            lambda: platform.executor.consumer.packs,
            "both hostile packs taken",
            until=lambda packs: packs >= taken + 2,
        )
        started = time.monotonic()
        await send(platform, batch_body(1, 1))
        await sink.wait_for(2)
        waited = time.monotonic() - started
        assert waited < 1.5, f"another tenant's event waited {waited:.1f} s for the load"
