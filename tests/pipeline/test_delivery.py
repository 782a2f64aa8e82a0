"""Events sent to the tracking API reach the API the user's function calls."""

from __future__ import annotations

import asyncpg
import grpc
import orjson

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink
from tests.registry.conftest import auth

SINGLE = """
async function onTrack(event, settings) {
  const res = await fetch(settings.endpoint + '/single', {
    method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(event)
  })
  if (res.status >= 500) throw new RetryError('HTTP ' + res.status)
}
async function onIdentify(event, settings) { throw new ValidationError('no identify here') }
"""
BATCHED = (
    SINGLE
    + """
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/batch', {method: 'POST', body: JSON.stringify(events)})
}
"""
)


def batch_body(n: int, start: int = 0, kind: str = "track") -> dict:
    return {
        "batch": [
            {"type": kind, "userId": f"u{i}", "event": "Order Completed", "messageId": f"m-{i}"}
            for i in range(start, start + n)
        ]
    }


async def send(p: Platform, body: dict) -> None:
    resp = await p.http.post("/v1/batch", json=body, auth=(p.write_key, ""))
    assert resp.status_code == 200, resp.text


async def test_single_handlers_receive_every_event(platform: Platform, sink: Sink) -> None:
    await platform.instance(SINGLE, sink.url)
    for start in range(0, 300, 100):
        await send(platform, batch_body(100, start))
    events = await sink.wait_for(300)
    assert sorted(e["messageId"] for e in events) == sorted(f"m-{i}" for i in range(300))


async def test_on_batch_gets_arrays_of_the_batch_size(platform: Platform, sink: Sink) -> None:
    await platform.instance(BATCHED, sink.url, batch_size=50, batch_wait_ms=500)
    # Enough volume for onBatch: the first packs run single handlers until the rate is known.
    for start in range(0, 1000, 100):
        await send(platform, batch_body(100, start))
    events = await sink.wait_for(1000)
    assert sorted({e["messageId"] for e in events}) == sorted(f"m-{i}" for i in range(1000))
    arrays = [b for b in sink.bodies if isinstance(b, list)]
    assert arrays, "onBatch was never called"
    assert max(len(a) for a in arrays) == 50


async def test_outcomes_are_recorded_and_retryable_events_go_to_retry(
    platform: Platform, sink: Sink, nats_client
) -> None:
    sink.status = 503
    iid = await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(3))
    await send(platform, batch_body(2, 100, kind="identify"))
    js = nats_client.jetstream()
    subject = f"retry.*.{iid}"
    sub = await js.subscribe(subject, ordered_consumer=True)
    msg = await sub.next_msg(timeout=30)
    assert msg.headers["Eventfn-Attempt"] == "1"
    assert "RetryError" in msg.headers["Eventfn-Last-Error"]
    assert len(orjson.loads(msg.data)) == 3
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        await eventually(
            lambda: conn.fetchrow(
                "SELECT sum(retried) r, sum(discarded) d FROM delivery_minute "
                "WHERE instance_id = $1",
                iid,
            ),
            "3 retried and 2 discarded events recorded",
            until=lambda row: row is not None and (row["r"], row["d"]) == (3, 2),
        )
    finally:
        await conn.close()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        stats_name = f"{platform.instance_name(iid)}/deliveryStats"
        stats = await stub.GetDeliveryStats(
            executor_pb2.GetDeliveryStatsRequest(name=stats_name), metadata=auth(platform.owner)
        )
        assert stats.totals.retried == 3 and stats.totals.discarded == 2
        assert stats.health == executor_pb2.HEALTH_FAILING
        failures = await stub.ListDeliveryFailures(
            executor_pb2.ListDeliveryFailuresRequest(parent=platform.instance_name(iid)),
            metadata=auth(platform.owner),
        )
        assert {f.version for f in failures.failures} <= {
            n async for n in versions_of(platform, iid)
        }
        kinds = {f.error.type for f in failures.failures}
        assert kinds == {"RetryError", "ValidationError"}
        # The three tracks ran in one invocation (with the identifies, if they came in time):
        # each sample says its logs and requests are those of all the invocation's events.
        retried = [f for f in failures.failures if f.error.type == "RetryError"]
        assert retried and all(f.invocation_events in (3, 5) for f in retried)
        assert all(f.outcome != types_pb2.OUTCOME_DELIVERED for f in failures.failures)
        _, stranger = await platform.registry.workspace("Stranger")
        try:
            await stub.GetDeliveryStats(
                executor_pb2.GetDeliveryStatsRequest(name=stats_name), metadata=auth(stranger)
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("another workspace must not see the instance")


async def versions_of(platform: Platform, iid: str):
    """Yield the names of the versions of an instance's function."""
    from eventfn_api.registry.v1 import registry_pb2 as rpb

    got = await platform.registry.stub.GetInstance(
        rpb.GetInstanceRequest(name=platform.instance_name(iid)), metadata=auth(platform.owner)
    )
    listed = await platform.registry.stub.ListFunctionVersions(
        rpb.ListFunctionVersionsRequest(parent=got.instance.function), metadata=auth(platform.owner)
    )
    for version in listed.versions:
        yield version.name


async def test_filtered_events_are_counted_per_instance(platform: Platform, sink: Sink) -> None:
    skip = orjson.dumps({"if": 'event = "Skip Me"', "action": "drop"}).decode()
    iid = await platform.instance(SINGLE, sink.url, filters=[skip])
    body = batch_body(5)
    for event in body["batch"][:3]:
        event["event"] = "Skip Me"
    await send(platform, body)
    await sink.wait_for(2)
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        await eventually(
            lambda: conn.fetchrow(
                "SELECT sum(filtered) f, sum(delivered) d FROM delivery_minute "
                "WHERE instance_id = $1",
                iid,
            ),
            "3 filtered and 2 delivered events recorded",
            until=lambda row: row is not None and (row["f"], row["d"]) == (3, 2),
        )
    finally:
        await conn.close()
