"""A retrier started in-process next to the pipeline's registry, router and executor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeAlias

import grpc
import pytest

from eventfn_api.retrier.v1 import retrier_pb2_grpc
from services.retrier.app import RunningRetrier, start_retrier
from services.retrier.settings import RetrierSettings
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import SERVICE, Registry, registry

__all__ = ["platform", "registry", "sink"]

StartRetrier: TypeAlias = (
    "Callable[..., Awaitable[tuple[RunningRetrier, retrier_pb2_grpc.RetrierAsyncStub]]]"
)


@pytest.fixture
async def start_retrier_on(registry: Registry, nats_url: str) -> AsyncIterator[StartRetrier]:
    """Return a function starting a retrier (settings overridable) against the test registry."""
    async with AsyncExitStack() as stack:

        async def start(
            **overrides: Any,
        ) -> tuple[RunningRetrier, retrier_pb2_grpc.RetrierAsyncStub]:
            values: dict[str, Any] = {
                "retrier_listen": "127.0.0.1:0",
                "nats_url": nats_url,
                "registry_addr": f"127.0.0.1:{registry.port}",
                "service_token": SERVICE,
                "retry_base_seconds": 0.05,
                "retry_cap_seconds": 0.2,
                "retry_window_seconds": 60,
                "retry_unknown_instance_grace_seconds": 0.5,
                **overrides,
            }
            running = await start_retrier(RetrierSettings(**values), stack)
            await running.watcher.ready.wait()
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            stack.push_async_callback(channel.close)
            return running, retrier_pb2_grpc.RetrierStub(channel)

        yield start


__all__ += ["Platform"]
