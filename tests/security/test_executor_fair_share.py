"""A tenant holding an executor's packs in flight: packs of one instance wait for its own
concurrency inside the executor, holding in-flight slots. A handler that waits out its
timeout, with a backlog of single-event packs, held every slot: the consumer stopped pulling
and every other tenant's events waited behind it (512 / 10 × 60 s ≈ 50 minutes per executor
with the defaults). One instance now holds at most a quarter of the slots; its further packs
go back to the stream for later.

Packs handed back stay pending in JetStream until they come again, and the consumer had a
bound of pending packs for every executor together (near one executor's in flight, later
20,000): a backlog of one instance past it held every pending slot, and JetStream delivered
nothing more to any executor until that instance drained. The consumer has no bound now.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common import streams
from tests.pipeline.conftest import Platform, Sink, sink, start_platform
from tests.registry.conftest import Registry, auth, registry

__all__ = ["registry", "sink"]

STALLS = "async function onTrack() { await new Promise((ok) => setTimeout(ok, 600000)) }"
# Packs of the stalled instance ahead of the neighbour's: past the 20,000 the executors'
# consumer held pending before.
BACKLOG = 20_100
DELIVERS = """async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
}"""


@pytest.fixture
async def small_executor(registry: Registry, nats_url: str) -> AsyncIterator[Platform]:
    """A data path whose executor holds 16 packs in flight (an instance: 4, twice the 2
    invocations it runs at once), reading through a consumer it made itself (the session's
    was made with the defaults)."""
    async with AsyncExitStack() as stack:
        yield await start_platform(
            registry,
            nats_url,
            stack,
            own_consumer=True,
            executor_max_inflight_packs=16,
            executor_instance_concurrency=2,
            # The stalled invocations are still in flight at the end: no grace to wait out.
            executor_shutdown_grace_seconds=0.5,
        )


async def _neighbour_behind(
    platform: Platform, sink: Sink, packs: int, seconds: float, *, copies: int = 0
) -> None:
    """Leave `packs` packs (one request after another: a pack each) to an instance that
    stalls, and `copies` copies of its last one stored straight in the stream (a backlog
    faster to build), then send a neighbour instance an event; fail unless it is delivered
    within `seconds`."""
    stalls = await platform.instance(STALLS, "http://127.0.0.1:9/", timeout_ms=20_000)
    try:
        for i in range(packs):
            sent = await platform.http.post(
                "/v1/track",
                auth=(platform.write_key, ""),
                json={"userId": "u", "event": "stall", "messageId": f"stall-{i}"},
            )
            assert sent.status_code == 200
        if copies:
            await _copy_last_pack(platform, stalls, copies)
        await platform.instance(DELIVERS, sink.url)
        sent = await platform.http.post(
            "/v1/track",
            auth=(platform.write_key, ""),
            json={"userId": "v", "event": "neighbour", "messageId": "neighbour-1"},
        )
        assert sent.status_code == 200
        try:
            await sink.wait_for(1, seconds=seconds)
        except TimeoutError:
            raise AssertionError(
                f"the neighbour's event waited behind the stalled instance's {packs + copies} packs"
            ) from None
    finally:  # its packs left in the stream are discarded, not run
        await platform.registry.stub.DeleteInstance(
            pb.DeleteInstanceRequest(name=platform.instance_name(stalls)),
            metadata=auth(platform.owner),
        )
        # Not for the session's executors to discard one by one in later tests.
        await platform.executor.nats.jetstream().purge_stream(
            streams.EVENTS_STREAM,
            subject=streams.events_subject(platform.workspace_id, stalls),
        )


async def _copy_last_pack(platform: Platform, instance_id: str, copies: int) -> None:
    """Store `copies` copies of an instance's last pack in EVENTS, each its own message."""
    js = platform.executor.nats.jetstream()
    subject = streams.events_subject(platform.workspace_id, instance_id)
    last = await js.get_last_msg(streams.EVENTS_STREAM, subject)
    room = asyncio.Semaphore(64)
    run = uuid.uuid4().hex

    async def store(i: int) -> None:
        async with room:
            headers = {**(last.headers or {}), streams.MSG_ID: f"{run}-{i}"}
            await js.publish(subject, last.data, headers=headers)

    await asyncio.gather(*(store(i) for i in range(copies)))


async def test_an_instance_that_stalls_leaves_the_executor_to_other_tenants(
    small_executor: Platform, sink: Sink
) -> None:
    await _neighbour_behind(small_executor, sink, packs=40, seconds=10)  # 2.5 times the slots


async def test_a_backlog_past_any_old_pending_bound_leaves_the_others_running(
    small_executor: Platform, sink: Sink
) -> None:
    await _neighbour_behind(small_executor, sink, packs=1, copies=BACKLOG, seconds=60)
