"""Faults the executor pool must survive without losing an accepted event."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import orjson
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import streams
from services.devtools.embedded import EmbeddedNats
from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, start_platform
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import SERVICE, Registry, auth


async def test_pack_for_a_deleted_instance_is_discarded_with_reason(
    platform: Platform, nats_client
) -> None:
    ghost = "ins_deleted000000000000"
    body = orjson.dumps([{"type": "track", "event": "E", "userId": "u", "messageId": "ghost-1"}])
    await nats_client.jetstream().publish(streams.events_subject("ws_x", ghost), body)
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        row = await eventually(
            lambda: conn.fetchrow(
                "SELECT error_message FROM delivery_failure WHERE instance_id = $1", ghost
            ),
            f"a failure recorded for {ghost}",
        )
        assert "instance deleted" in row["error_message"]
        discarded = await conn.fetchval(
            "SELECT sum(discarded) FROM delivery_minute WHERE instance_id = $1", ghost
        )
        assert discarded == 1
    finally:
        await conn.close()


async def test_a_pack_routed_with_a_newer_config_waits_for_it(
    platform: Platform, sink: Sink, nats_client
) -> None:
    # The router's watch may bring a new instance before the executor's does: its first
    # packs were discarded as "instance deleted". They wait now until the executor has the
    # revision they were routed with (and are discarded only if the instance is not in it).
    ghost = "ins_notyetknown000000000"
    ahead = (await platform.executor.watcher.wait_until(lambda view: True)).revision + 2
    body = orjson.dumps([{"type": "track", "event": "E", "userId": "u", "messageId": "ahead-1"}])
    await nats_client.jetstream().publish(
        streams.events_subject("ws_x", ghost), body, headers={streams.REVISION: str(ahead)}
    )
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        failures = "SELECT error_message FROM delivery_failure WHERE instance_id = $1"
        # An absence has no event to await: the executor pulls at once, and discarded at once.
        await asyncio.sleep(1.0)
        assert await conn.fetchrow(failures, ghost) is None
        for _ in range(2):  # two changes: the executor's watch passes the pack's revision
            await platform.instance(SINGLE, sink.url)
        row = await eventually(lambda: conn.fetchrow(failures, ghost), "the discard recorded")
        assert "instance deleted" in row["error_message"]
        assert platform.executor.watcher.revision >= ahead
    finally:
        await conn.close()


async def test_no_pulling_before_the_first_config_snapshot(
    registry: Registry, nats_url: str, nats_client
) -> None:
    async with AsyncExitStack() as stack:
        executor = await start_executor(
            ExecutorSettings(
                executor_listen="127.0.0.1:0",
                nats_url=nats_url,
                registry_addr="127.0.0.1:9",  # nothing listens: no snapshot ever arrives
                database_url=registry.database_url,
                service_token=SERVICE,
                executor_workers=1,
                executor_consumer="never-snapshot",
            ),
            stack,
        )
        js = nats_client.jetstream()
        await js.publish(streams.events_subject("ws_x", "ins_x"), b"[]")
        # An absence has no event to await: an executor that pulled without a snapshot would
        # have created its consumer and fetched within this second (it pulls at once).
        await asyncio.sleep(1.0)
        assert not executor.watcher.ready.is_set()
        assert executor.consumer.packs == 0
        names = [c.name for c in await js.consumers_info(streams.EVENTS_STREAM)]
        assert "never-snapshot" not in names


async def test_nats_restart_under_load_loses_nothing(
    registry: Registry, sink: Sink, tmp_path: Path
) -> None:
    server = EmbeddedNats(tmp_path / "nats")
    server.start()
    try:
        async with AsyncExitStack() as stack:
            p = await start_platform(registry, server.url, stack)
            await p.instance(SINGLE, sink.url)
            await send(p, batch_body(500))
            server.stop()
            server.start()  # same port and store: clients reconnect
            for start in range(500, 1000, 100):

                async def accepted(start: int = start) -> bool:
                    resp = await p.http.post(
                        "/v1/batch", json=batch_body(100, start), auth=(p.write_key, "")
                    )
                    assert resp.status_code in (200, 503), resp.text  # 503 while reconnecting
                    return resp.status_code == 200

                await eventually(accepted, f"events from m-{start} accepted", seconds=60)
            events = await sink.wait_for(1000, seconds=90)
            assert {e["messageId"] for e in events} == {f"m-{i}" for i in range(1000)}
    finally:
        server.stop()


async def test_sigterm_hands_unfinished_packs_back(
    registry: Registry, nats_url: str, sink: Sink, nats_client
) -> None:
    # A durable consumer of this workspace's own: on the session's shared one, the next pack
    # could be one another test left (one delivered five times was taken for this one).
    async with AsyncExitStack() as stack:
        platform = await start_platform(registry, nats_url, stack, own_consumer=True)
        await _hands_back_unfinished(platform, sink, nats_client)


async def _hands_back_unfinished(platform: Platform, sink: Sink, nats_client) -> None:
    sink.gate = asyncio.Event()  # the sink answers only once the test is over
    await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(1))
    consumer, dispatcher = platform.executor.consumer, platform.executor.dispatcher
    try:
        await sink.wait_for(1)  # the invocation is waiting for its fetch: shutdown begins
        await consumer.stop()
        assert not await dispatcher.drain(0.2), "the invocation cannot finish unanswered"
        assert await consumer.hand_back() == 1
        # Another executor pulling now gets it at once (not after the 120 s ack wait).
        ws = platform.workspace_id
        other = await nats_client.jetstream().pull_subscribe(
            f"events.{ws}.>", durable=f"executor-{ws}", stream=streams.EVENTS_STREAM
        )
        (again,) = await other.fetch(1, timeout=5)
        assert again.metadata.num_delivered == 2
        await again.ack()
    finally:
        sink.gate.set()


async def test_a_fault_that_stays_dead_letters_the_events(
    platform: Platform, sink: Sink, nats_client
) -> None:
    """The executor handed the packs of an invocation it failed on back for another try,
    without end: a fault that stays (an unreadable fetch URL was one) ran the function again
    for ever. After five faults on a pack its events are dead-lettered, replayable once the
    fault is fixed. The fault here: an instance timeout the runtime refuses (0 ms, written
    past the registry's checks), on every delivery."""
    iid = await platform.instance(SINGLE, sink.url)
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        await conn.execute("UPDATE instance SET timeout_ms = 0 WHERE id = $1", iid)
        revision = platform.executor.watcher.revision
        renamed = res.Instance(name=platform.instance_name(iid), display_name="faulty")
        await platform.registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=renamed, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])
            ),
            metadata=auth(platform.owner),
        )
        await platform.executor.watcher.wait_until(lambda v: v.revision > revision)
        assert platform.executor.watcher.instances[iid].timeout.ToTimedelta().total_seconds() == 0
        dead = await nats_client.jetstream().subscribe(
            streams.dead_subject(platform.workspace_id, iid), ordered_consumer=True
        )
        await send(platform, batch_body(1))
        letter = await dead.next_msg(timeout=60)  # after 1 + 2 + 4 + 8 s of backoff
        assert len(orjson.loads(letter.data)) == 1
        assert "ExecutorError" in letter.headers[streams.LAST_ERROR]
        row = await eventually(
            lambda: conn.fetchrow(
                "SELECT error_type, error_message FROM delivery_failure WHERE instance_id = $1",
                iid,
            ),
            "the dead letter's failure recorded",
        )
        assert row["error_type"] == "ExecutorError"
        assert "5 times" in row["error_message"] and "correlation id" in row["error_message"]
        assert sink.paths == []  # the function never ran
    finally:
        await conn.close()


V1_SLOW_LOAD = """
const loaded = Date.now() + 500; while (Date.now() < loaded) {}
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/v1', {method: 'POST', body: JSON.stringify(events)})
}
"""
V2 = """
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/v2', {method: 'POST', body: JSON.stringify(events)})
}
"""


async def test_a_pack_waiting_for_its_code_runs_on_its_own_version(
    platform: Platform, sink: Sink, nats_client
) -> None:
    """A dead letter replayed on an earlier version (its pack names the version) waits while
    that version's code loads; a live pack of the same instance, on the deployed version,
    came meanwhile, and the replayed events ran with the live pack's version."""
    iid = await platform.instance(V1_SLOW_LOAD, sink.url)
    instance = platform.instance_name(iid)
    got = await platform.registry.stub.GetInstance(
        pb.GetInstanceRequest(name=instance), metadata=auth(platform.owner)
    )
    v1 = got.instance.version.rsplit("/", 1)[-1]
    revision = platform.executor.watcher.revision
    saved = await platform.registry.stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=got.instance.function,
            code=V2,
            settings=(
                await platform.registry.stub.GetFunction(
                    pb.GetFunctionRequest(name=got.instance.function), metadata=auth(platform.owner)
                )
            ).latest_version.settings,
            deploy_instances=[instance],
        ),
        metadata=auth(platform.owner),
    )
    assert saved.deployed_instances
    await platform.executor.watcher.wait_until(lambda v: v.revision > revision)
    await send(platform, batch_body(1, 900))  # the deployed version's context is loaded
    await sink.wait_for(1)
    js = nats_client.jetstream()
    subject = streams.events_subject(platform.workspace_id, iid)

    def pack(message_id: str) -> bytes:
        return orjson.dumps(
            [{"type": "track", "event": "E", "userId": "u", "messageId": message_id}]
        )

    await js.publish(subject, pack("replayed-on-v1"), headers={streams.VERSION: v1})
    await js.publish(subject, pack("live-on-v2"))
    await sink.wait_for(3)
    ran = {
        event["messageId"]: path
        for path, body in zip(sink.paths, sink.bodies, strict=True)
        for event in body
    }
    assert ran["replayed-on-v1"] == "/v1", ran
    assert ran["live-on-v2"] == "/v2", ran
