"""The executor kept what it holds of each instance that ran on it (its decoded settings, up to
256 KiB, its rate meter, its concurrency limit, its V8 context keys, and the pool's handlers and
worker placement of those contexts) for the process's lifetime: only a new revision of a live
instance replaced them. A tenant creating, feeding and deleting instances at its change budget
(~10 a second) grew every executor by 2.5 MB a second for good. An instance the configuration
drops (deleted or disabled) is now forgotten, once the work it has in flight ends."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import streams
from services.executor.app import RunningExecutor
from services.runtime.model import owner_of
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, platform, sink, start_platform
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import Registry, auth, registry

__all__ = ["platform", "registry", "sink"]
CHURNED = 5


def kept(executor: RunningExecutor, instance_id: str) -> list[str]:
    """Name what the executor still holds of an instance."""
    dispatcher = executor.dispatcher
    pool = dispatcher._pool
    held = {
        "settings": dispatcher._settings_cache,
        "context keys": dispatcher._context_keys,
        "rate": dispatcher._rates,
        "concurrency": dispatcher._limits,
        "pool handlers": {owner_of(key) for key in pool._handlers},
        "pool placement": {owner_of(key) for key in pool._affinity},
    }
    return [name for name, ids in held.items() if instance_id in ids]


async def ran(platform: Platform, instance_id: str, n: int = 0) -> None:
    """Send event `m-<n>` and wait until the instance's invocation of it has started."""
    await send(platform, batch_body(1, start=n))
    await eventually(
        lambda: "concurrency" in kept(platform.executor, instance_id), f"{instance_id} invoked"
    )


async def delete(platform: Platform, instance_id: str) -> None:
    """Delete an instance; return once the executor's configuration no longer has it."""
    await platform.registry.stub.DeleteInstance(
        pb.DeleteInstanceRequest(name=platform.instance_name(instance_id)),
        metadata=auth(platform.owner),
    )
    await platform.executor.watcher.wait_until(lambda v: instance_id not in v.instances)


async def test_deleted_instances_leave_nothing_in_the_executor(
    platform: Platform, sink: Sink
) -> None:
    neighbour = await platform.instance(SINGLE, sink.url)
    churned = []
    codes = [f"{SINGLE}// {n}" for n in range(CHURNED)]  # kept: `instance` names by id(code)
    for n, code in enumerate(codes):  # created, fed and deleted: some in flight when deleted
        instance_id = await platform.instance(code, sink.url)
        await ran(platform, instance_id, n)
        await delete(platform, instance_id)
        churned.append(instance_id)
    left = await eventually(
        lambda: {i: kept(platform.executor, i) for i in churned if kept(platform.executor, i)},
        "the deleted instances forgotten",
        until=lambda left: not left,
        seconds=10,
    )
    assert not left
    assert kept(platform.executor, neighbour), "a live instance's state was forgotten"
    await send(platform, batch_body(1, start=1000))
    assert "m-1000" in {e["messageId"] for e in await sink.wait_for(CHURNED + 1)}


async def test_a_disabled_instance_is_forgotten_too(platform: Platform, sink: Sink) -> None:
    instance_id = await platform.instance(SINGLE, sink.url)
    await ran(platform, instance_id)
    await platform.registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(
                name=platform.instance_name(instance_id), state=res.Instance.STATE_DISABLED
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        ),
        metadata=auth(platform.owner),
    )
    await platform.executor.watcher.wait_until(lambda v: not v.instances[instance_id].enabled)
    await eventually(
        lambda: kept(platform.executor, instance_id),
        "the disabled instance forgotten",
        until=lambda held: not held,
        seconds=10,
    )


async def test_an_instance_deleted_mid_invocation_finishes_it_first(
    registry: Registry, nats_url: str, sink: Sink, nats_client
) -> None:
    sink.gate = asyncio.Event()  # the sink answers once the instance is deleted
    async with AsyncExitStack() as stack:
        # A consumer of its own: what it holds and redelivers is this test's alone.
        own = await start_platform(registry, nats_url, stack, own_consumer=True)
        instance_id = await own.instance(SINGLE, sink.url)
        await send(own, batch_body(1))
        try:
            await sink.wait_for(1)  # the invocation waits for its fetch
            await delete(own, instance_id)
            assert kept(own.executor, instance_id), "forgotten with work in flight"
        finally:
            sink.gate.set()
        await eventually(
            lambda: kept(own.executor, instance_id),
            "the deleted instance forgotten once its invocation ended",
            until=lambda held: not held,
            seconds=10,
        )
        durable = f"executor-{own.workspace_id}"
        info = await eventually(
            lambda: nats_client.jetstream().consumer_info(streams.EVENTS_STREAM, durable),
            "the pack settled",
            until=lambda info: info.num_ack_pending == 0,
            seconds=10,
        )
        assert info.num_redelivered == 0, "the pack in flight was handed back, not delivered"
        assert len(sink.bodies) == 1
