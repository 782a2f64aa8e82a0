"""Executor.GetTrace: an event's journey from the platform's trace store, for members who may
read an instance (or the source) it went through.

Who asks is known before anything is read (UNAUTHENTICATED, or NOT_FOUND for another
workspace's parent, cost one registry call). By messageId, a lookup lists which instances
got the event (names, not messages), keeps those of the caller's workspace (this executor's
configuration says whose each is: what other workspaces stored under the messageId costs the
lookup nothing, so neither its answer nor its time tells of them), asks the registry about
each once (at most MAX_INSTANCE_CHECKS), and reads only the newest trace of those the caller
may read; every read is bounded by one `ReadBudget` (messages and bytes), and a journey cut
short by it ends in a TRUNCATED span.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from nats.js import JetStreamContext

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.packs import MAX_MESSAGE_ID_CHARS
from services.common.registry_gate import RegistryGate
from services.common.trace_store import (
    INSTANCE_ATTRIBUTE,
    INSTANCE_TOKEN,
    READ_BYTES,
    READ_MESSAGES,
    ReadBudget,
    instances_of_message,
    read_trace,
    traces_of_message,
)

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
# Instances one lookup asks the registry about (a messageId may be every tenant's "order-1").
MAX_INSTANCE_CHECKS = 128
CHECKS_AT_ONCE = 16
# Other journeys of a messageId named in an answer, the newest.
MAX_OTHER_TRACES = 100
# The name of the last span of a journey not read to its end.
TRUNCATED = (
    f"truncated: more of this journey is stored than one lookup reads ({READ_MESSAGES:,} "
    f"messages, {READ_BYTES // 2**20} MiB, {MAX_INSTANCE_CHECKS} instances)"
)


# Said of every trace not found (the same whether there is none or it is another workspace's):
# the first place a new user looks is an event sent a moment ago.
NOT_STORED_YET = (
    "no journey is stored for it (yet): an event's spans reach the trace store a few seconds "
    "after its delivery (the span processors export every 5 s, OTEL_BSP_SCHEDULE_DELAY) and "
    "stay an hour (EVENTFN_TRACE_RETENTION_SECONDS); for an event sent just now, ask again "
    "shortly"
)


# The workspace of an instance, as the executor's configuration has it (None: not known).
WorkspaceOf = Callable[[str], str | None]


class InstanceChecks:
    """Which instances the caller may read: those of its workspace, the registry asked once
    per instance, at most MAX_INSTANCE_CHECKS per lookup, CHECKS_AT_ONCE at a time."""

    def __init__(
        self,
        gate: RegistryGate,
        context: grpc.aio.ServicerContext,
        workspace: str,
        workspace_of: WorkspaceOf,
    ):
        self._gate = gate
        self._context = context
        self._workspace = workspace
        self._workspace_of = workspace_of
        self._found: dict[str, res.Instance | None] = {}
        self.complete = True  # False once an instance went unasked (over the limit)

    def ours(self, instance_ids: Iterable[str]) -> list[str]:
        """Keep the instances of the caller's workspace (a deleted one is no one's)."""
        return [i for i in instance_ids if self._workspace_of(i) == self._workspace]

    def readable(self, instance_id: str) -> res.Instance | None:
        """Return the instance if the caller may read it (None if not, or not asked)."""
        return self._found.get(instance_id)

    async def ask(self, instance_ids: Iterable[str]) -> None:
        """Ask about the instances not asked yet, as many as the limit leaves."""
        todo = [i for i in dict.fromkeys(self.ours(instance_ids)) if i not in self._found]
        room = MAX_INSTANCE_CHECKS - len(self._found)
        if len(todo) > room:
            self.complete = False
            todo = todo[: max(room, 0)]
        self._found.update(dict.fromkeys(todo))
        limit = asyncio.Semaphore(CHECKS_AT_ONCE)
        try:
            async with asyncio.TaskGroup() as group:
                for instance_id in todo:
                    group.create_task(self._ask(instance_id, limit))
        except ExceptionGroup as failed:  # the registry's answer, as one check would raise it
            raise failed.exceptions[0] from None

    async def _ask(self, instance_id: str, limit: asyncio.Semaphore) -> None:
        if not INSTANCE_TOKEN.fullmatch(instance_id):
            return
        async with limit:
            self._found[instance_id] = await self._gate.readable_instance(
                self._context, names.INSTANCE.name(self._workspace, instance_id)
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
    gate: RegistryGate,
    workspace_of: WorkspaceOf,
    request: pb.GetTraceRequest,
    context: grpc.aio.ServicerContext,
) -> pb.GetTraceResponse:
    """Find a journey by messageId or trace id: the spans of it the caller may read (see
    `_visible_spans`); NOT_FOUND when there are none.

    A messageId is the sender's to choose, so another workspace's events may carry the same
    one: of its traces, the newest the caller may see is answered, and only those it may see
    are named as the others; what strangers stored under it is never read.
    """
    me = await gate.whoami(context)  # UNAUTHENTICATED before anything is read
    workspace = names.parse_workspace("parent", request.parent)
    which = request.WhichOneof("target")
    missing = NotFound("trace", request.message_id or request.trace_id, NOT_STORED_YET)
    candidates: list[str] = []
    if which == "trace_id":
        candidates = [request.trace_id.lower()]
        if not _TRACE_ID.match(candidates[0]):
            raise InvalidArgument.field("trace_id", "must be 32 hex digits")
    elif not (which == "message_id" and request.message_id):
        raise InvalidArgument.field("message_id", "give a message_id or a trace_id")
    elif len(request.message_id) > MAX_MESSAGE_ID_CHARS:  # no event has one; not echoed
        raise InvalidArgument.field(
            "message_id", f"is longer than the {MAX_MESSAGE_ID_CHARS} characters a messageId may be"
        )
    if names.last(me.workspace.name) != workspace:
        raise missing
    checks = InstanceChecks(gate, context, workspace, workspace_of)
    budget = ReadBudget()
    if not candidates:
        candidates = await _traces_of_message(js, checks, request.message_id, budget)
    for index in range(len(candidates) - 1, -1, -1):  # the newest first
        stored = await read_trace(js, candidates[index], budget)
        spans = await _visible_spans(checks, stored.spans)
        if spans:
            found = [span_message(s) for s in spans]
            if not (stored.complete and checks.complete):
                found.append(_truncated(spans[-1]))
            return pb.GetTraceResponse(
                trace_id=candidates[index],
                spans=found,
                other_trace_ids=candidates[:index][-MAX_OTHER_TRACES:],
            )
    raise missing


async def _traces_of_message(
    js: JetStreamContext, checks: InstanceChecks, message_id: str, budget: ReadBudget
) -> list[str]:
    """Return the trace ids of a messageId's journeys through instances the caller may read,
    oldest first."""
    listed = await instances_of_message(js, message_id)
    listed = {i: listed[i] for i in checks.ours(listed)}
    if len(listed) > MAX_INSTANCE_CHECKS:
        raise FailedPrecondition(
            f"events with messageId {message_id!r} went to more than {MAX_INSTANCE_CHECKS} "
            "instances of this workspace: too many to check in one lookup; look the journey "
            "up by its trace id (`eventfn deliveries --failures` and `eventfn dead show` "
            "print them)"
        )
    await checks.ask(listed)
    mine = {i: t for i, t in listed.items() if checks.readable(i) is not None}
    return await traces_of_message(js, message_id, mine, budget)


def _truncated(last: dict[str, Any]) -> pb.TraceSpan:
    """Mark the end of a journey not read to its end."""
    start = timestamp_pb2.Timestamp()
    start.FromNanoseconds(int(last["end"]))
    return pb.TraceSpan(name=TRUNCATED, service="eventfn-executor", start_time=start)


async def _visible_spans(
    checks: InstanceChecks, spans: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Return the spans the caller may read: those of an instance it may read, of the source
    of such an instance, and their children (a fetch, a route). A trace id is not a secret
    (a sender chooses the one its events continue, and a destination may be sent it), so
    one trace may hold spans of several workspaces: each sees its own."""
    await checks.ask(
        str(s["attributes"][INSTANCE_ATTRIBUTE])
        for s in spans
        if s["attributes"].get(INSTANCE_ATTRIBUTE)
    )
    instances: dict[str, bool] = {}
    sources: set[str] = set()
    for span in spans:
        instance_id = str(span["attributes"].get(INSTANCE_ATTRIBUTE, ""))
        if instance_id and instance_id not in instances:
            found = checks.readable(instance_id)
            instances[instance_id] = found is not None
            if found is not None:
                sources.add(found.source.rsplit("/", 1)[-1])
    if not any(instances.values()):
        return []
    by_id = {str(s["span_id"]): s for s in spans}

    def readable(span: dict[str, Any], depth: int = 0) -> bool:
        attributes = span["attributes"]
        if INSTANCE_ATTRIBUTE in attributes:
            return instances.get(str(attributes[INSTANCE_ATTRIBUTE]), False)
        if "eventfn.source_id" in attributes:
            return str(attributes["eventfn.source_id"]) in sources
        if span.get("kind") == "SERVER":
            # A call into the platform continues the trace its caller names, anyone's: one
            # made with a reader's invoke span as parent (sent to the hosts it fetches) was
            # shown in that reader's trace, a user agent of the caller's choosing its text.
            return False
        parent = by_id.get(str(span.get("parent_id", "")))
        return parent is not None and depth < 64 and readable(parent, depth + 1)

    return [s for s in spans if readable(s)]
