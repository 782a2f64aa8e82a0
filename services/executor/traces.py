"""Executor.GetTrace: an event's journey from the platform's trace store, for members who may
read an instance (or the source) it went through."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from nats.js import JetStreamContext

from eventfn_api.executor.v1 import executor_pb2 as pb
from services.common import names
from services.common.errors import EventfnError, InvalidArgument, NotFound
from services.common.trace_store import read_trace, traces_of_message

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# May the caller read this instance (by resource name)? Raises NOT_FOUND when not.
CheckInstance = Callable[[grpc.aio.ServicerContext, str], Awaitable[object]]


# Said of every trace not found (the same whether there is none or it is another workspace's):
# the first place a new user looks is an event sent a moment ago.
NOT_STORED_YET = (
    "no journey is stored for it (yet): an event's spans reach the trace store a few seconds "
    "after its delivery (the span processors export every 5 s, OTEL_BSP_SCHEDULE_DELAY) and "
    "stay an hour (EVENTFN_TRACE_RETENTION_SECONDS); for an event sent just now, ask again "
    "shortly"
)


def span_message(span: dict[str, Any]) -> pb.TraceSpan:
    """Convert a stored span to its proto."""
    start = timestamp_pb2.Timestamp()
    start.FromNanoseconds(int(span["start"]))
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(max(0, int(span["end"]) - int(span["start"])))
    attributes = struct_pb2.Struct()
    attributes.update({k: v for k, v in span["attributes"].items()})
    events = []
    for event in span["events"]:
        item = struct_pb2.Struct()
        item.update({"name": event["name"], **event["attributes"]})
        events.append(item)
    return pb.TraceSpan(
        span_id=span["span_id"],
        parent_span_id=span["parent_id"],
        name=span["name"],
        service=span["service"],
        start_time=start,
        duration=duration,
        error=span["status"] == "ERROR",
        attributes=attributes,
        events=events,
        linked_trace_ids=span["links"],
    )


async def get_trace(
    js: JetStreamContext,
    check_instance: CheckInstance,
    request: pb.GetTraceRequest,
    context: grpc.aio.ServicerContext,
) -> pb.GetTraceResponse:
    """Find a journey by messageId or trace id: the spans of it the caller may read (see
    `_visible_spans`); NOT_FOUND when there are none.

    A messageId is the sender's to choose, so another workspace's events may carry the same
    one: of its traces, the newest the caller may see is answered, and only those it may see
    are named as the others.
    """
    workspace = names.parse_workspace("parent", request.parent)
    which = request.WhichOneof("target")
    missing = NotFound("trace", request.message_id or request.trace_id, NOT_STORED_YET)
    if which == "trace_id":
        trace_id = request.trace_id.lower()
        if not _TRACE_ID.match(trace_id):
            raise InvalidArgument.field("trace_id", "must be 32 hex digits")
        candidates = [trace_id]
    elif which == "message_id" and request.message_id:
        candidates = await traces_of_message(js, request.message_id)
    else:
        raise InvalidArgument.field("message_id", "give a message_id or a trace_id")
    visible: list[tuple[str, list[dict[str, Any]]]] = []
    for trace_id in candidates:
        spans = await _visible_spans(
            check_instance, context, workspace, await read_trace(js, trace_id)
        )
        if spans:
            visible.append((trace_id, spans))
    if not visible:
        raise missing
    trace_id, spans = visible[-1]
    return pb.GetTraceResponse(
        trace_id=trace_id,
        spans=[span_message(s) for s in spans],
        other_trace_ids=[t for t, _ in visible[:-1]],
    )


async def _visible_spans(
    check_instance: CheckInstance,
    context: grpc.aio.ServicerContext,
    workspace: str,
    spans: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Return the spans the caller may read: those of an instance it may read, of the source
    of such an instance, and their children (a fetch, a route). A trace id is not a secret
    (a sender chooses the one its events continue, and a destination may be sent it), so
    one trace may hold spans of several workspaces: each sees its own."""
    instances: dict[str, bool] = {}
    sources: set[str] = set()
    for span in spans:
        instance_id = str(span["attributes"].get("eventfn.instance_id", ""))
        if instance_id and instance_id not in instances:
            try:
                found = await check_instance(context, names.INSTANCE.name(workspace, instance_id))
            except EventfnError as error:  # not this caller's to see
                if error.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                    raise
                instances[instance_id] = False
            else:
                instances[instance_id] = True
                sources.add(str(getattr(found, "source", "")).rsplit("/", 1)[-1])
    if not any(instances.values()):
        return []
    by_id = {str(s["span_id"]): s for s in spans}

    def readable(span: dict[str, Any], depth: int = 0) -> bool:
        attributes = span["attributes"]
        if "eventfn.instance_id" in attributes:
            return instances.get(str(attributes["eventfn.instance_id"]), False)
        if "eventfn.source_id" in attributes:
            return str(attributes["eventfn.source_id"]) in sources
        parent = by_id.get(str(span.get("parent_id", "")))
        return parent is not None and depth < 64 and readable(parent, depth + 1)

    return [s for s in spans if readable(s)]
