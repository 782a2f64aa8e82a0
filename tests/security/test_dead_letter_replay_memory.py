"""Replaying or purging all of an instance's dead letters (no names) held every one of them in
the shared retrier's memory, in the RPC and again in the operation (129 MiB of letters: +619
MiB): one call by a workspace's owner on its own instance, repeated by the retrier that took
the operation over once the first was killed. Both now stream the letters, a chunk of packs at
a time."""

from __future__ import annotations

import tracemalloc
import uuid
from collections.abc import Awaitable, Callable

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.retrier.v1 import retrier_pb2
from services.common import streams
from tests.registry.conftest import Registry, auth, registry
from tests.retrier.conftest import StartRetrier, start_retrier_on
from tests.security.test_control_plane_dead_letters import Tenant, tenant

__all__ = ["registry", "start_retrier_on"]

PACKS = 160
EVENTS_PER_PACK = 10
EVENT_BYTES = 10_000
STORED = PACKS * EVENTS_PER_PACK * EVENT_BYTES  # 16 MB


async def bury_many(nats_client: NatsClient, t: Tenant) -> None:
    """Store PACKS packs of EVENTS_PER_PACK large events on the tenant's DEAD subject."""
    js = nats_client.jetstream()
    subject = streams.dead_subject(t.workspace_id, t.instance_id)
    pad = "x" * EVENT_BYTES
    for p in range(PACKS):
        events = [
            {"type": "track", "event": "e", "userId": "u", "messageId": f"m{p}-{i}", "p": pad}
            for i in range(EVENTS_PER_PACK)
        ]
        await js.publish(
            subject,
            orjson.dumps(events),
            headers={
                streams.MSG_ID: f"d-{uuid.uuid4().hex}",
                streams.COUNT: str(len(events)),
                streams.DEAD_REASON: "failed",
            },
        )


async def peak_bytes(call: Callable[[], Awaitable[int]]) -> tuple[int, int]:
    """Return what `call` returns and the most memory this process held above its start."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = await call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - before


@pytest.mark.parametrize("action", ["replay", "purge"])
async def test_all_of_an_instances_letters_are_streamed_not_held(
    registry: Registry,
    start_retrier_on: StartRetrier,
    nats_client: NatsClient,
    action: str,
) -> None:
    running, stub = await start_retrier_on()
    owner = await tenant(registry, "Hoarder")
    await running.watcher.wait_until(lambda v: owner.instance_id in set(v.instances))
    await bury_many(nats_client, owner)
    md = auth(owner.owner)

    async def replay() -> int:
        request = retrier_pb2.ReplayDeadLettersRequest(parent=owner.instance)
        return await stub.replay(request, metadata=md)

    async def purge() -> int:
        request = retrier_pb2.PurgeDeadLettersRequest(parent=owner.instance)
        return (await stub.PurgeDeadLetters(request, metadata=md)).purged

    done, held = await peak_bytes(replay if action == "replay" else purge)
    assert done == PACKS * EVENTS_PER_PACK
    # A chunk of packs at a time (256 KiB, or one larger pack), a few copies of it at most.
    assert held < STORED / 4, f"{action} of {STORED >> 20} MiB held {held >> 20} MiB at once"
