"""How fast a workspace may run previews. Each runs in a fresh context on the V8 workers that
run every tenant's functions, and a worker is replaced (every context on it rebuilt) after so
many contexts: one owner's 600 previews in 12 s replaced the shared worker four times, its
memory past 1 GB. A workspace now runs `EVENTFN_EXECUTOR_PREVIEWS_BURST` at once, then
`EVENTFN_EXECUTOR_PREVIEWS_PER_SECOND`: past that, RESOURCE_EXHAUSTED saying when to retry;
another workspace's budget is its own."""

from __future__ import annotations

from contextlib import AsyncExitStack

import grpc
import pytest

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from tests.pipeline.conftest import start_platform
from tests.registry.conftest import Registry, auth, registry

__all__ = ["registry"]
BURST = 3
EVENT = '{"type": "track", "event": "Order Completed", "userId": "u1"}'


async def test_a_workspace_runs_its_burst_of_previews_then_waits_its_turn(
    registry: Registry, nats_url: str
) -> None:
    async with AsyncExitStack() as stack:
        platform = await start_platform(
            registry,
            nats_url,
            stack,
            executor_previews_burst=BURST,
            executor_previews_per_second=0.01,
        )
        _, neighbour = await registry.workspace("Neighbour")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}")
        stack.push_async_callback(channel.close)
        stub = executor_pb2_grpc.ExecutorStub(channel)

        async def preview(token: str) -> executor_pb2.PreviewResponse:
            return await stub.Preview(
                executor_pb2.PreviewRequest(
                    code="async function onTrack(event) { return event.event }",
                    event_json=EVENT,
                ),
                metadata=auth(token),
            )

        for _ in range(BURST):
            assert (await preview(platform.owner)).result_json == '"Order Completed"'
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await preview(platform.owner)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EVENTFN_EXECUTOR_PREVIEWS_BURST" in (refused.value.details() or "")
        assert "retry in" in (refused.value.details() or "")
        assert (await preview(neighbour)).result_json == '"Order Completed"'


async def test_previews_refused_for_the_callers_mistake_spend_nothing(
    registry: Registry, nats_url: str
) -> None:
    # A CI job previewing broken code spent the budget and locked its workspace out.
    async with AsyncExitStack() as stack:
        platform = await start_platform(
            registry,
            nats_url,
            stack,
            executor_previews_burst=BURST,
            executor_previews_per_second=0.01,
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}")
        stack.push_async_callback(channel.close)
        stub = executor_pb2_grpc.ExecutorStub(channel)
        for code, event in [("async function onTrack(event) {", EVENT)] * (BURST + 1) + [
            ("async function onTrack(e) { return 1 }", "not json")
        ] * 2:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Preview(
                    executor_pb2.PreviewRequest(code=code, event_json=event),
                    metadata=auth(platform.owner),
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ran = await stub.Preview(
            executor_pb2.PreviewRequest(
                code="async function onTrack(event) { return event.event }", event_json=EVENT
            ),
            metadata=auth(platform.owner),
        )
        assert ran.result_json == '"Order Completed"'
