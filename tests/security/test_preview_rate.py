"""How fast a workspace may run previews. Each runs in a fresh context on the V8 workers that
run every tenant's functions, and a worker is replaced (every context on it rebuilt) after so
many contexts: one owner's 600 previews in 12 s replaced the shared worker four times, its
memory past 1 GB. A workspace now runs `EVENTFN_EXECUTOR_PREVIEWS_BURST` at once, then
`EVENTFN_EXECUTOR_PREVIEWS_PER_SECOND`: past that, RESOURCE_EXHAUSTED saying when to retry;
another workspace's budget is its own, and a preview refused for the caller's mistake spends
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from tests.pipeline.conftest import Platform, start_platform
from tests.registry.conftest import Registry, auth, registry

__all__ = ["registry"]
BURST = 3
EVENT = '{"type": "track", "event": "Order Completed", "userId": "u1"}'
RUNS = "async function onTrack(event) { return event.event }"
Preview = Callable[..., Awaitable[executor_pb2.PreviewResponse]]


@pytest.fixture
async def budgeted(registry: Registry, nats_url: str) -> AsyncIterator[tuple[Platform, Preview]]:
    """A data path whose executor gives a workspace BURST previews, then one in 100 s; and
    a call of its Preview (code, event, token)."""
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

        async def preview(token: str, code: str = RUNS, event: str = EVENT) -> Any:
            return await stub.Preview(
                executor_pb2.PreviewRequest(code=code, event_json=event), metadata=auth(token)
            )

        yield platform, preview


async def test_a_workspace_runs_its_burst_of_previews_then_waits_its_turn(
    registry: Registry, budgeted: tuple[Platform, Preview]
) -> None:
    platform, preview = budgeted
    _, neighbour = await registry.workspace("Neighbour")
    for _ in range(BURST):
        assert (await preview(platform.owner)).result_json == '"Order Completed"'
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await preview(platform.owner)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EVENTFN_EXECUTOR_PREVIEWS_BURST" in (refused.value.details() or "")
    assert "retry in" in (refused.value.details() or "")
    assert (await preview(neighbour)).result_json == '"Order Completed"'


async def test_previews_refused_for_the_callers_mistake_spend_nothing(
    budgeted: tuple[Platform, Preview],
) -> None:
    # A CI job previewing broken code spent the budget and locked its workspace out.
    platform, preview = budgeted
    mistakes = [("async function onTrack(event) {", EVENT)] * (BURST + 1) + [(RUNS, "not json")] * 2
    for code, event in mistakes:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await preview(platform.owner, code, event)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await preview(platform.owner)).result_json == '"Order Completed"'
