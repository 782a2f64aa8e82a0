"""Issue 11: discards by design (a template that skips onGroup) are not failures: the instance
stays healthy, and the discards stay visible as discarded, with their reason."""

from __future__ import annotations

import grpc

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_parity_batching import counters, event, post_batch
from tests.registry.conftest import auth

NO_GROUP = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/track', {method: 'POST', body: JSON.stringify(event)})
}
async function onIdentify(event, settings) {
  if (!event.traits.email) throw new ValidationError('an email is required')
  await fetch(settings.endpoint + '/identify', {method: 'POST', body: JSON.stringify(event)})
}
"""
BROKEN = """
async function onTrack(event, settings) { return event.properties.missing.field }
"""


async def stats(platform: Platform, instance_id: str) -> pb.GetDeliveryStatsResponse:
    """Return the instance's delivery stats and health through the Executor API."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        return await executor_pb2_grpc.ExecutorStub(channel).GetDeliveryStats(
            pb.GetDeliveryStatsRequest(name=f"{platform.instance_name(instance_id)}/deliveryStats"),
            metadata=auth(platform.owner),
        )


async def test_a_function_that_skips_on_group_is_healthy(platform: Platform, sink: Sink) -> None:
    iid = await platform.instance(NO_GROUP, sink.url)
    await post_batch(
        platform,
        [event("track", f"h-track-{n}") for n in range(4)]
        + [event("group", f"h-group-{n}") for n in range(4)]
        + [event("identify", "h-no-email"), event("identify", "h-email", email="a@b.c")],
    )
    await counters(platform, iid, lambda c: c["delivered"] + c["discarded"] == 10)
    got = await stats(platform, iid)
    assert (got.totals.delivered, got.totals.discarded, got.totals.failed) == (5, 5, 0)
    assert got.health == pb.HEALTH_HEALTHY, "discards by design are not failures"
    assert got.dead_letters == 0, "discards by design are not dead letters"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        failures = await executor_pb2_grpc.ExecutorStub(channel).ListDeliveryFailures(
            pb.ListDeliveryFailuresRequest(parent=platform.instance_name(iid)),
            metadata=auth(platform.owner),
        )
    assert {f.error.type for f in failures.failures} == {"EventNotSupported", "ValidationError"}
    assert {f.outcome for f in failures.failures} == {types_pb2.OUTCOME_DISCARDED}


async def test_a_function_that_throws_is_failing(platform: Platform, sink: Sink) -> None:
    iid = await platform.instance(BROKEN, sink.url)
    await post_batch(platform, [event("track", f"h-broken-{n}") for n in range(3)])
    await counters(platform, iid, lambda c: c["failed"] == 3)
    got = await stats(platform, iid)
    assert got.health == pb.HEALTH_FAILING
