"""A retrier started in-process next to the pipeline's registry, router and executor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, TypeAlias

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from eventfn_api.retrier.v1 import retrier_pb2, retrier_pb2_grpc
from services.retrier.app import RunningRetrier, start_retrier
from services.retrier.dead_packs import LetterId
from services.retrier.letter_ids import LetterIds
from services.retrier.settings import RetrierSettings
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import SERVICE, Registry, registry

__all__ = ["platform", "registry", "sink"]

StartRetrier: TypeAlias = "Callable[..., Awaitable[tuple[RunningRetrier, RetrierClient]]]"


# The dead-letter ids retriers of the tests give (they run with the service token SERVICE).
LETTER_IDS = LetterIds.from_secret(SERVICE)


def lid(letter: Any) -> str:
    """Return a dead letter's id, the last segment of its name (e.g. "k7c…q4.0")."""
    return letter.name.rsplit("/", 1)[-1]


def seq_of(letter: Any) -> int:
    """Return the DEAD stream sequence of a dead letter (a message or its name)."""
    return LETTER_IDS.read(lid(letter)).seq


def public_id(place: str) -> str:
    """Return the id retriers show for the letter at `<sequence>[.<index>]` of DEAD."""
    return LETTER_IDS.show(LetterId.parse(place))


class OperationFailed(Exception):
    """A replay operation that ended with an error; `status` is its google.rpc.Status."""

    def __init__(self, status: Any) -> None:
        super().__init__(status.message)
        self.status = status


class RetrierClient:
    """The generated Retrier stub, plus `replay`: a ReplayDeadLetters operation run to its end."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.stub = retrier_pb2_grpc.RetrierStub(channel)
        self.operations = operations_pb2_grpc.OperationsStub(channel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)

    async def replay(self, request: retrier_pb2.ReplayDeadLettersRequest, metadata: Any) -> int:
        """Start a replay, wait for its operation and return how many letters it replayed."""
        operation = await self.stub.ReplayDeadLetters(request, metadata=metadata)
        while not operation.done:
            operation = await self.operations.WaitOperation(
                operations_pb2.WaitOperationRequest(
                    name=operation.name, timeout=duration_pb2.Duration(seconds=10)
                ),
                metadata=metadata,
            )
        if operation.HasField("error"):
            raise OperationFailed(operation.error)
        result = retrier_pb2.ReplayDeadLettersResponse()
        operation.response.Unpack(result)
        return result.replayed


@pytest.fixture
async def start_retrier_on(registry: Registry, nats_url: str) -> AsyncIterator[StartRetrier]:
    """Return a function starting a retrier (settings overridable) against the test registry."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> tuple[RunningRetrier, RetrierClient]:
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
            return running, RetrierClient(channel)

        yield start


__all__ += ["OperationFailed", "Platform", "RetrierClient", "lid"]
