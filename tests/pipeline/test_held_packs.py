"""Packs that wait inside the executor longer than JetStream's ack wait: an instance runs only
its concurrency's invocations at once, and its other packs wait their turn. Without word from
the executor, JetStream delivered them again meanwhile and the function got their events
twice; the executor now tells it, every third of the ack wait, that they are in work.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from eventfn_api.registry.v1 import registry_pb2 as pb
from tests.eventually import eventually
from tests.pipeline.conftest import Sink, sink, start_platform
from tests.registry.conftest import Registry, auth, registry

__all__ = ["registry", "sink"]

SLOW = """async function onTrack(event, settings) {
  await new Promise((ok) => setTimeout(ok, 600))
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
}"""
PACKS = 6  # one at a time, 0.6 s each: the last waits ≈ 3 s, twice the ack wait


async def test_packs_waiting_past_the_ack_wait_reach_the_function_once(
    registry: Registry, nats_url: str, sink: Sink
) -> None:
    async with AsyncExitStack() as stack:
        platform = await start_platform(
            registry,
            nats_url,
            stack,
            own_consumer=True,
            executor_ack_wait_seconds=1.5,
            executor_instance_concurrency=1,
        )
        slow = await platform.instance(SLOW, sink.url)
        try:
            for i in range(PACKS):  # one request after another: a pack each
                sent = await platform.http.post(
                    "/v1/track",
                    auth=(platform.write_key, ""),
                    json={"userId": "u", "event": "held", "messageId": f"held-{i}"},
                )
                assert sent.status_code == 200
            await sink.wait_for(PACKS, seconds=30)
            consumer = platform.executor.consumer
            await eventually(lambda: consumer.in_flight == 0, "every pack settled")
            ids = [event["messageId"] for event in sink.events()]
            assert sorted(ids) == sorted(f"held-{i}" for i in range(PACKS)), "each once"
        finally:  # the shared consumer will see these packs too: discarded, not run again
            await platform.registry.stub.DeleteInstance(
                pb.DeleteInstanceRequest(name=platform.instance_name(slow)),
                metadata=auth(platform.owner),
            )
