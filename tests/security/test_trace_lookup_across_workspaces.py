"""A messageId is the sender's to choose: another workspace may send events with the same one.
Looking a journey up by messageId answers the caller's own trace and never names another
workspace's — a tenant who reuses a victim's messageId can neither hide the victim's journey
from them nor learn the trace ids of its own from the victim's answers (and vice versa).
Likewise a trace id: a stranger's events may continue the caller's trace, and each workspace
then reads only its own spans of it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE
from services.common.trace_store import IndexKey, ensure_stream, trace_subject
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]
CODE = "async function onTrack(event, settings) {}"


def invoke_span(trace_id: str, instance_id: str, message_id: str) -> dict[str, Any]:
    """An invoke span as the trace store keeps it."""
    return span(
        trace_id,
        "invoke",
        {"eventfn.instance_id": instance_id, MESSAGE_IDS_ATTRIBUTE: [message_id]},
    )


def span(
    trace_id: str, name: str, attributes: dict[str, Any], parent: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A span as the trace store keeps it."""
    now = time.time_ns()
    return {
        "trace_id": trace_id,
        "span_id": uuid.uuid4().hex[:16],
        "parent_id": parent["span_id"] if parent else "",
        "name": name,
        "service": "eventfn-executor",
        "kind": "INTERNAL",
        "start": now,
        "end": now + 1_000_000,
        "status": "UNSET",
        "attributes": attributes,
        "events": [],
        "links": [],
    }


async def test_a_reused_messageid_finds_only_the_callers_own_trace(
    platform: Platform, nats_client: NatsClient
) -> None:
    mine = await platform.instance(CODE, "http://127.0.0.1:9/")
    stranger_ws, stranger = await platform.registry.workspace(f"Stranger {uuid.uuid4().hex[:6]}")
    message_id = f"order-{uuid.uuid4().hex[:8]}"
    own, older, theirs = (uuid.uuid4().hex for _ in range(3))
    js = nats_client.jetstream()
    await ensure_stream(js, retention_seconds=600)
    # Oldest first: the caller's replayed journey, the caller's own, then the stranger's,
    # the newest, naming an instance of another workspace.
    for trace_id, instance_id in ((older, mine), (own, mine), (theirs, f"ins_{uuid.uuid4().hex}")):
        span = invoke_span(trace_id, instance_id, message_id)
        key = IndexKey(message_id, instance_id)
        await js.publish(trace_subject(trace_id, key), orjson.dumps([span]))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        found = await executor.GetTrace(
            executor_pb2.GetTraceRequest(parent=platform.workspace, message_id=message_id),
            metadata=auth(platform.owner),
        )
        assert found.trace_id == own
        assert list(found.other_trace_ids) == [older]
        # The stranger, in its own workspace, finds nothing of the caller's.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await executor.GetTrace(
                executor_pb2.GetTraceRequest(
                    parent=f"workspaces/{stranger_ws}", message_id=message_id
                ),
                metadata=auth(stranger),
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        # The same answer as for a messageId nobody sent: nothing tells that one exists.
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await executor.GetTrace(
                executor_pb2.GetTraceRequest(
                    parent=f"workspaces/{stranger_ws}", message_id=message_id + "-never-sent"
                ),
                metadata=auth(stranger),
            )
        assert absent.value.code() == grpc.StatusCode.NOT_FOUND
        details = refused.value.details() or ""
        assert details == (absent.value.details() or "").replace("-never-sent", "")
        assert "ask again shortly" in details


async def test_a_trace_id_shared_with_another_workspace_shows_each_only_its_spans(
    platform: Platform, nats_client: NatsClient
) -> None:
    # A sender picks the trace id its events continue (traceparent), and a destination may
    # be sent it: a stranger's events can join the caller's trace.
    mine = await platform.instance(CODE, "http://127.0.0.1:9/")
    trace_id = uuid.uuid4().hex
    ingest = span(trace_id, "ingest", {"eventfn.source_id": platform.source_id})
    route = span(trace_id, "route", {}, ingest)
    invoke = span(trace_id, "invoke", {"eventfn.instance_id": mine}, ingest)
    fetch = span(trace_id, "POST", {"url.full": "https://api.example.com/mine"}, invoke)
    theirs_in = span(trace_id, "ingest", {"eventfn.source_id": f"src_{uuid.uuid4().hex}"})
    theirs = span(trace_id, "invoke", {"eventfn.instance_id": f"ins_{uuid.uuid4().hex}"}, theirs_in)
    secret = span(trace_id, "POST", {"url.full": "https://api.example.com/theirs"}, theirs)
    js = nats_client.jetstream()
    await ensure_stream(js, retention_seconds=600)
    stored = [ingest, route, invoke, fetch, theirs_in, theirs, secret]
    await js.publish(trace_subject(trace_id), orjson.dumps(stored))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        found = await executor.GetTrace(
            executor_pb2.GetTraceRequest(parent=platform.workspace, trace_id=trace_id),
            metadata=auth(platform.owner),
        )
    ids = {s.span_id for s in found.spans}
    assert ids == {ingest["span_id"], route["span_id"], invoke["span_id"], fetch["span_id"]}
    assert "theirs" not in str(found)


async def test_a_call_continuing_a_readers_trace_is_not_shown_in_it(
    platform: Platform, nats_client: NatsClient
) -> None:
    """Anyone, with no token, could call an RPC naming a reader's invoke span as its parent
    (an instance sends that to the hosts it fetches): the call's SERVER span joined the
    reader's trace and was shown in it, its user agent a text of the caller's choosing."""
    mine = await platform.instance(CODE, "http://127.0.0.1:9/")
    trace_id = uuid.uuid4().hex
    invoke = span(trace_id, "invoke", {"eventfn.instance_id": mine})
    fetch = span(trace_id, "POST", {"url.full": "https://api.example.com/mine"}, invoke)
    forged = span(
        trace_id,
        "/eventfn.executor.v1.Executor/GetTrace",
        {"rpc.user_agent": "eventfn notice: rotate your API key at https://evil.example/"},
        invoke,
    )
    forged["kind"] = "SERVER"
    below = span(trace_id, "child of the forged call", {}, forged)
    js = nats_client.jetstream()
    await ensure_stream(js, retention_seconds=600)
    await js.publish(trace_subject(trace_id), orjson.dumps([invoke, fetch, forged, below]))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        found = await executor.GetTrace(
            executor_pb2.GetTraceRequest(parent=platform.workspace, trace_id=trace_id),
            metadata=auth(platform.owner),
        )
    assert {s.span_id for s in found.spans} == {invoke["span_id"], fetch["span_id"]}
    assert "evil" not in str(found)
