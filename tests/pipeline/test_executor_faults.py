"""Faults the executor pool must survive without losing an accepted event."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import orjson

from services.common import streams
from services.devtools.embedded import EmbeddedNats
from services.executor.app import start_executor
from services.executor.settings import ExecutorSettings
from tests.pipeline.conftest import Platform, Sink, start_platform
from tests.pipeline.test_delivery import SINGLE, batch_body, send
from tests.registry.conftest import SERVICE, Registry


async def test_pack_for_a_deleted_instance_is_discarded_with_reason(
    platform: Platform, nats_client
) -> None:
    ghost = "ins_deleted000000000000"
    body = orjson.dumps([{"type": "track", "event": "E", "userId": "u", "messageId": "ghost-1"}])
    await nats_client.jetstream().publish(streams.events_subject("ws_x", ghost), body)
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        async with asyncio.timeout(30):
            while True:
                row = await conn.fetchrow(
                    "SELECT error_message FROM delivery_failure WHERE instance_id = $1", ghost
                )
                if row is not None:
                    break
                await asyncio.sleep(0.05)
        assert "instance deleted" in row["error_message"]
        discarded = await conn.fetchval(
            "SELECT sum(discarded) FROM delivery_minute WHERE instance_id = $1", ghost
        )
        assert discarded == 1
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
        await asyncio.sleep(1.0)  # asserting an absence: give it time to (wrongly) pull
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
            sent = 500
            async with asyncio.timeout(60):
                while sent < 1000:
                    resp = await p.http.post(
                        "/v1/batch", json=batch_body(100, sent), auth=(p.write_key, "")
                    )
                    if resp.status_code == 200:
                        sent += 100
                    else:
                        assert resp.status_code == 503, resp.text  # never a 200 that was lost
                        await asyncio.sleep(0.1)
            events = await sink.wait_for(1000, seconds=90)
            assert {e["messageId"] for e in events} == {f"m-{i}" for i in range(1000)}
    finally:
        server.stop()


async def test_sigterm_hands_unfinished_packs_back(
    platform: Platform, sink: Sink, nats_client
) -> None:
    sink.delay = 3.0  # the invocation is still waiting for its fetch when shutdown begins
    await platform.instance(SINGLE, sink.url)
    await send(platform, batch_body(1))
    consumer, dispatcher = platform.executor.consumer, platform.executor.dispatcher
    async with asyncio.timeout(30):
        while not dispatcher.busy:  # noqa: ASYNC110 — the pack is on its way to V8
            await asyncio.sleep(0.01)
    await consumer.stop()
    assert not await dispatcher.drain(0.2), "the slow invocation cannot finish in 0.2 s"
    assert await consumer.hand_back() == 1
    # Another executor pulling now gets it at once (not after the 120 s ack wait).
    other = await nats_client.jetstream().pull_subscribe(
        "events.>", durable="executor", stream=streams.EVENTS_STREAM
    )
    (again,) = await other.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    await again.ack()
