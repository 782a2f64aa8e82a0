"""GetTrace by messageId answered NOT_FOUND word for word whether or not another workspace's
events carried that messageId, but it asked the registry about every instance of every
workspace the messageId went to before answering: its time told a tenant whether, and to how
many instances, strangers sent an event with a messageId it guessed in the last hour (7.9 ms
against 4.7 for one instance, 43 ms against 5.6 for sixteen), and past 128 such instances it
said so outright (FAILED_PRECONDITION). A lookup now counts and asks about the instances of
the caller's workspace alone."""

from __future__ import annotations

import statistics
import time
import uuid

import grpc
import orjson
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common.trace_store import IndexKey, ensure_stream, trace_subject
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import auth, registry
from tests.security.test_control_plane_dead_letters import tenant
from tests.security.test_trace_lookup_across_workspaces import invoke_span

__all__ = ["platform", "registry", "sink"]
ROUNDS = 40


async def strangers_instances(platform: Platform, count: int) -> list[str]:
    """Create `count` other workspaces with an instance each; return the instances' ids."""
    ids = [(await tenant(platform.registry, "Stranger")).instance_id for _ in range(count)]
    await platform.executor.watcher.wait_until(lambda v: all(i in v.instances for i in ids))
    return ids


async def store_journey(nc: NatsClient, message_id: str, instance_ids: list[str]) -> None:
    """Store a journey of `message_id` as the executor's exporter does: an index key each."""
    js = nc.jetstream()
    await ensure_stream(js, retention_seconds=600)
    trace_id = uuid.uuid4().hex
    for instance_id in instance_ids:
        await js.publish(
            trace_subject(trace_id, IndexKey(message_id, instance_id)),
            orjson.dumps([invoke_span(trace_id, instance_id, message_id)]),
        )


async def lookup(platform: Platform, message_id: str) -> tuple[float, grpc.StatusCode, str]:
    """Look a messageId up as the platform's owner: how long it took and what it said."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        started = time.perf_counter()
        try:
            await executor.GetTrace(
                executor_pb2.GetTraceRequest(parent=platform.workspace, message_id=message_id),
                metadata=auth(platform.owner),
            )
        except grpc.aio.AioRpcError as error:
            took = time.perf_counter() - started
            return took, error.code(), (error.details() or "").replace(message_id, "<id>")
    raise AssertionError(f"a stranger's journey of {message_id} was found")


async def test_the_time_of_a_lookup_does_not_tell_a_strangers_messageid(
    platform: Platform, nats_client: NatsClient
) -> None:
    guessed = f"order-{uuid.uuid4().hex[:8]}"
    await store_journey(nats_client, guessed, await strangers_instances(platform, 16))
    await lookup(platform, "warm-up")
    used, unused = [], []
    for _ in range(ROUNDS):
        took, code, said = await lookup(platform, guessed)
        used.append(took)
        took, unused_code, unused_said = await lookup(platform, f"order-{uuid.uuid4().hex[:8]}")
        unused.append(took)
        assert (code, said) == (unused_code, unused_said) == (grpc.StatusCode.NOT_FOUND, said)
    a, b = statistics.median(used), statistics.median(unused)
    # Asked about sixteen instances, the stranger's took 7.7× as long.
    assert a < 1.5 * b, f"median {a * 1000:.1f} ms for the stranger's, {b * 1000:.1f} ms unused"


async def test_a_messageid_of_many_strangers_instances_is_not_found_as_any_other(
    platform: Platform, nats_client: NatsClient
) -> None:
    guessed = f"order-{uuid.uuid4().hex[:8]}"
    # Instances this workspace does not have (no one's, as a stranger's): 129, past the limit.
    await store_journey(nats_client, guessed, [f"ins_{uuid.uuid4().hex[:20]}" for _ in range(129)])
    _, code, said = await lookup(platform, guessed)
    _, unused_code, unused_said = await lookup(platform, f"order-{uuid.uuid4().hex[:8]}")
    assert (code, said) == (unused_code, unused_said)
    assert code == grpc.StatusCode.NOT_FOUND
