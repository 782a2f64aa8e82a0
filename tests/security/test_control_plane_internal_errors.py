"""Issue 10, item 9 (second half): an exception that is not one of the API's own errors reaches
the caller as INTERNAL with a correlation id only, never with its text; the server logs the
traceback under the same id. Induced in every service, unary and streaming calls alike.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.retrier.v1 import retrier_pb2
from eventfn_api.router.v1 import router_pb2, router_pb2_grpc
from services.registry.store import RegistryStore
from services.registry.watch import LiveConfig
from services.retrier.dead_letters import DeadLetterStore
from services.router.publisher import Ingestor
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import SERVICE, auth, registry
from tests.retrier.conftest import StartRetrier, public_id, start_retrier_on

__all__ = ["platform", "registry", "sink", "start_retrier_on"]

# What a bug's message may hold: a statement with a token hash, a sealed setting.
SECRET = "INSERT INTO token (secret_hash) VALUES ('9f86d081884c7d65') sealed:v1:QUJD"
ID = re.compile(r"correlation id ([0-9a-f]{32})")


def boom(*_: Any, **__: Any) -> Any:
    raise RuntimeError(SECRET)


async def aboom(*_: Any, **__: Any) -> Any:
    raise RuntimeError(SECRET)


def check_internal(error: grpc.aio.AioRpcError, caplog: pytest.LogCaptureFixture) -> None:
    """Check the status says nothing but a correlation id, which the log has with the bug."""
    assert error.code() == grpc.StatusCode.INTERNAL, error.details()
    details = error.details() or ""
    assert "RuntimeError" not in details and "9f86d08" not in details and "sealed" not in details
    everything = repr(error.trailing_metadata()) + repr(error.initial_metadata())
    assert "9f86d08" not in everything and "sealed:v1" not in everything
    match = ID.search(details)
    assert match, details
    correlation_id = match.group(1)
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.INTERNAL.value[0]
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details)
    assert info.reason == "INTERNAL" and info.metadata["correlation_id"] == correlation_id
    logged = [r for r in caplog.records if correlation_id in r.getMessage()]
    assert len(logged) == 1, "the id names exactly one log record"
    assert logged[0].levelno == logging.ERROR and logged[0].exc_info is not None
    assert SECRET in logging.Formatter().formatException(logged[0].exc_info)


async def internal(
    call: Callable[[], Awaitable[Any]], caplog: pytest.LogCaptureFixture
) -> grpc.aio.AioRpcError:
    with caplog.at_level(logging.ERROR, logger="services.common.rpc"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call()
    check_internal(caught.value, caplog)
    return caught.value


async def test_every_service_answers_a_bug_with_internal_and_a_correlation_id(
    platform: Platform,
    start_retrier_on: StartRetrier,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    md = auth(platform.owner)
    registry = platform.registry.stub
    _, retrier = await start_retrier_on()

    # Registry, unary: the token lookup fails the way a NUL once made it fail.
    monkeypatch.setattr(RegistryStore, "member_by_token_hash", aboom)
    await internal(lambda: registry.WhoAmI(pb.WhoAmIRequest(), metadata=md), caplog)
    monkeypatch.undo()

    # Registry, server streaming: WatchConfig's read of the configuration fails.
    monkeypatch.setattr(LiveConfig, "refresh", aboom)

    async def watch() -> Any:
        stream = registry.WatchConfig(pb.WatchConfigRequest(watcher="t"), metadata=auth(SERVICE))
        return await asyncio.wait_for(stream.read(), 10)

    await internal(watch, caplog)
    monkeypatch.undo()

    # Executor: Preview's syntax check fails.
    monkeypatch.setattr("services.executor.servicer.check_syntax", boom)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        await internal(
            lambda: executor.Preview(
                executor_pb2.PreviewRequest(
                    code="async function onTrack() {}", event_json='{"type": "track"}'
                ),
                metadata=md,
            ),
            caplog,
        )
    monkeypatch.undo()

    # Retrier: the DEAD stream read fails.
    monkeypatch.setattr(DeadLetterStore, "pack", aboom)
    await internal(
        lambda: retrier.GetDeadLetter(
            retrier_pb2.GetDeadLetterRequest(
                name=f"{platform.workspace}/instances/ins_1/deadLetters/{public_id('1')}"
            ),
            metadata=md,
        ),
        caplog,
    )
    monkeypatch.undo()

    # Router, unary and bidirectional streaming: storing the events fails.
    monkeypatch.setattr(Ingestor, "ingest", aboom)
    events = orjson.dumps([{"type": "track", "userId": "u1", "event": "x"}])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.router.grpc_port}") as channel:
        router = router_pb2_grpc.RouterStub(channel)
        await internal(
            lambda: router.Ingest(
                router_pb2.IngestRequest(write_key=platform.write_key, events_json=events)
            ),
            caplog,
        )

        # The stream answers the batch with the same INTERNAL status and goes on.
        with caplog.at_level(logging.ERROR, logger="services.common.rpc"):
            call = router.IngestStream()
            await call.write(
                router_pb2.IngestStreamRequest(write_key=platform.write_key, events_json=events)
            )
            answer = await asyncio.wait_for(call.read(), 10)
            await call.done_writing()
        assert isinstance(answer, router_pb2.IngestStreamResponse)
        assert answer.error.code == grpc.StatusCode.INTERNAL.value[0]
        message = answer.error.message
        assert "RuntimeError" not in message and "9f86d08" not in message
        match = ID.search(message)
        assert match, message
        logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
        assert len(logged) == 1 and logged[0].exc_info is not None
    monkeypatch.undo()

    # And with the bug gone, the same calls work again: the mapping did not break anything.
    who = await registry.WhoAmI(pb.WhoAmIRequest(), metadata=md)
    assert who.member.name


async def test_each_failure_gets_its_own_correlation_id(
    platform: Platform, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(RegistryStore, "member_by_token_hash", aboom)

    def call() -> Any:
        return platform.registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(platform.owner))

    errors = [await internal(call, caplog) for _ in range(2)]
    ids = {match.group(1) for e in errors if (match := ID.search(e.details() or ""))}
    assert len(ids) == 2
