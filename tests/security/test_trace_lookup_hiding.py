"""`eventfn trace <messageId>` read the first 100 traces stored under a messageId, oldest first,
before it checked which the caller may see: a stranger (a write key of any workspace was
enough: the ingest span names the request's messageIds even when no instance gets them) who
stored 100 traces under a predictable messageId ("order-42") hid the victim's journey. Now a
messageId's traces are found through the instances that got it, and a lookup reads only
those of instances the caller may read, whatever strangers stored.

And the executor read everything before it knew who asked: a caller without a token got
NOT_FOUND (after the full read) instead of UNAUTHENTICATED. Now nothing is read for a caller
the registry does not know, nor for one asking about another workspace (the test watches the
trace store's read requests on NATS)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE
from services.common.trace_store import STREAM, TraceStoreExporter
from services.common.tracer import TracerProvider
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]
CODE = "async function onTrack(event, settings) {}"


@pytest_asyncio.fixture
async def tracer(nats_url: str) -> AsyncIterator[TracerProvider]:
    """Spans stored as the services store them: through the trace store's exporter."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(TraceStoreExporter(nats_url, 600)))
    yield provider
    provider.shutdown()


def journey(provider: TracerProvider, name: str, attributes: dict[str, Any]) -> str:
    """Record a one-span trace; return its trace id."""
    with provider.get_tracer("test").start_as_current_span(name, attributes=attributes) as span:
        return format(span.get_span_context().trace_id, "032x")


async def trace_reads(nats_client: NatsClient) -> tuple[list[str], Subscription]:
    """Watch the JetStream API requests about the trace store (stream info, message gets,
    direct gets, consumers: any way of reading it)."""
    seen: list[str] = []

    async def note(msg: Msg) -> None:
        if STREAM in msg.subject.split("."):
            seen.append(msg.subject)

    sub = await nats_client.subscribe("$JS.API.>", cb=note)
    await nats_client.flush()
    return seen, sub


async def test_a_stranger_cannot_hide_the_callers_journey(
    platform: Platform, tracer: TracerProvider
) -> None:
    mine = await platform.instance(CODE, "http://127.0.0.1:9/")
    message_id = f"order-{uuid.uuid4().hex[:8]}"
    stranger_source, stranger_instance = f"src_{uuid.uuid4().hex}", f"ins_{uuid.uuid4().hex}"
    ids = {MESSAGE_IDS_ATTRIBUTE: [message_id]}
    # A write key is enough for these: 100 requests, each its own trace, naming the messageId.
    for _ in range(100):
        journey(tracer, "ingest", {"eventfn.source_id": stranger_source, **ids})
    # A stranger's own instance got it 100 times before the caller's event, and 100 after.
    for _ in range(100):
        journey(tracer, "invoke", {"eventfn.instance_id": stranger_instance, **ids})
    own = journey(tracer, "invoke", {"eventfn.instance_id": mine, **ids})
    for _ in range(100):
        journey(tracer, "invoke", {"eventfn.instance_id": stranger_instance, **ids})

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        found = await executor.GetTrace(
            executor_pb2.GetTraceRequest(parent=platform.workspace, message_id=message_id),
            metadata=auth(platform.owner),
        )
    assert found.trace_id == own
    assert list(found.other_trace_ids) == []
    assert [s.name for s in found.spans] == ["invoke"]


async def test_nothing_is_read_before_the_caller_is_known_to_be_of_the_workspace(
    platform: Platform, tracer: TracerProvider, nats_client: NatsClient
) -> None:
    mine = await platform.instance(CODE, "http://127.0.0.1:9/")
    message_id = f"order-{uuid.uuid4().hex[:8]}"
    trace_id = journey(
        tracer, "invoke", {"eventfn.instance_id": mine, MESSAGE_IDS_ATTRIBUTE: [message_id]}
    )
    _, stranger = await platform.registry.workspace(f"Stranger {uuid.uuid4().hex[:6]}")
    seen, watch = await trace_reads(nats_client)
    by_message = executor_pb2.GetTraceRequest(parent=platform.workspace, message_id=message_id)
    by_trace = executor_pb2.GetTraceRequest(parent=platform.workspace, trace_id=trace_id)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        for request in (by_message, by_trace):
            for metadata in ((), auth("not-a-token"), auth(f"eft_{uuid.uuid4().hex}")):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await executor.GetTrace(request, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            # A member of another workspace, asking about this one: as if nothing were stored.
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await executor.GetTrace(request, metadata=auth(stranger))
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        await nats_client.flush()
        assert seen == [], "read before the caller was known"
        # The watch sees reads: the owner's lookups are read.
        for request in (by_message, by_trace):
            found = await executor.GetTrace(request, metadata=auth(platform.owner))
            assert found.trace_id == trace_id
        await nats_client.flush()
        assert seen
    await watch.unsubscribe()
