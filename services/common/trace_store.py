"""A bounded store of recent spans on the platform's own JetStream, so an event's journey can be
shown (`eventfn trace`) without running a tracing backend.

Spans go, as compact JSON, to the TRACES stream, one message per trace and batch of spans. A
span of an instance (invoke, ...) makes each messageId it names, with the instance, an index
key of its trace: the message goes under the subject of the first key,
`traces.<trace id>.<sha1 of the messageId>.<instance id>`, each further key gets an empty
message under its own, and spans naming no instance's messageId (ingest, route) go under
`traces.<trace id>._`. So a trace is read from `traces.<trace id>.>`, and a messageId's
traces are listed, with the instances that got the event, under `traces.*.<sha1>.*`: a lookup
asks only whether the caller may read those instances and never reads what a stranger's
sender stored under the same messageId (a messageId is the sender's to choose); a single
event's spans still cost one message per batch, index included. Reads are direct-get batches
(one request each, `allow_direct`), bounded per lookup by a `ReadBudget`.

The stream keeps an hour (EVENTFN_TRACE_RETENTION_SECONDS) and at most 128 MiB, dropping the
oldest first, in memory: it is a debugging aid, never in the way of events, so its messages
are not written to disk (with `sync_interval: always` every stored message costs a disk sync:
a file stream made tracing the largest cost per event). A NATS restart empties it. Spans the
previous release stored (`traces.<trace id>.<sha1>`, no instance) are still read by trace id
but not found by messageId: they name no instance to check the caller against, and they are
gone within the retention (older layouts, `traces.<trace id>` and `traces.msg.<sha1>`, are
no longer read). The exporter runs its own NATS connection on its own thread (span
processors export from a thread of theirs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, NamedTuple

import nats
import nats.errors
import nats.js.errors
import orjson
import uvloop
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from services.common.errors import FailedPrecondition, Unavailable
from services.common.settings import nats_servers
from services.common.streams import connection_of
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE

log = logging.getLogger(__name__)

STREAM = "TRACES"
MAX_BYTES = 128 * 1024 * 1024
PUBLISH_SECONDS = 5.0
# The largest message of a trace's spans (the server takes 8 MiB at most).
MESSAGE_BYTES = 1024 * 1024
READ_SECONDS = 5.0
# What one lookup reads at most, all its requests together (a trace of a busy batch is a few
# hundred messages; a sender chooses the trace id its events continue, so a stranger can add
# to any trace, and a lookup must not cost what the stranger chose).
READ_MESSAGES = 2000
READ_BYTES = 8 * 1024 * 1024
# Direct get answers at most this many subjects of a `multi_last` request (413 beyond).
MULTI_LAST_SUBJECTS = 1024

NO_MESSAGE = "_"  # the last token of a trace message whose spans name no instance's messageId
INSTANCE_ATTRIBUTE = "eventfn.instance_id"
# An instance id as it may stand in a subject (the registry makes `ins_` and hex digits).
INSTANCE_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# An API error of a missing stream (JSStreamNotFoundErr).
_NO_STREAM = 10059


class IndexKey(NamedTuple):
    """A messageId and the instance whose span named it: what finds a trace."""

    message_id: str
    instance_id: str


def message_token(message_id: str) -> str:
    """Return the subject token standing for a messageId."""
    return hashlib.sha1(message_id.encode(), usedforsecurity=False).hexdigest()


def trace_subject(trace_id: str, key: IndexKey | None = None) -> str:
    """Return the subject of a trace's message found by this key (by none: `traces.<id>._`)."""
    if key is None:
        return f"traces.{trace_id}.{NO_MESSAGE}"
    return f"traces.{trace_id}.{message_token(key.message_id)}.{key.instance_id}"


def index_keys(record: Mapping[str, Any]) -> list[IndexKey]:
    """Return the keys a stored span is found by: each messageId it names, with its instance.

    A span of no instance (ingest, route) is found through its trace only: a trace is shown
    to those who may read an instance of it, and its instances' spans name the messageIds.
    """
    attributes = record["attributes"]
    instance_id = str(attributes.get(INSTANCE_ATTRIBUTE, ""))
    if not INSTANCE_TOKEN.fullmatch(instance_id):
        return []
    return [IndexKey(str(m), instance_id) for m in attributes.get(MESSAGE_IDS_ATTRIBUTE, ())]


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """Describe a finished span as the store keeps it."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_id": format(parent.span_id, "016x") if parent else "",
        "name": span.name,
        "service": span.resource.attributes.get("service.name", ""),
        "kind": span.kind.name,
        "start": span.start_time or 0,
        "end": span.end_time or 0,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "links": [format(link.context.trace_id, "032x") for link in span.links],
    }


async def ensure_stream(js: JetStreamContext, retention_seconds: float) -> None:
    """Create or update the TRACES stream."""
    config = StreamConfig(
        name=STREAM,
        subjects=["traces.>"],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=StorageType.MEMORY,
        max_age=retention_seconds,
        max_bytes=MAX_BYTES,
        allow_direct=True,  # lookups read with direct-get batches
    )
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        info = await js.stream_info(STREAM)
        if info.config.storage != StorageType.MEMORY:
            # Made on disk by an earlier release: a stream's storage cannot change, and what
            # it holds is an hour of debugging aid.
            await js.delete_stream(STREAM)
            await js.add_stream(config)
        else:
            await js.update_stream(config)


async def _connection_error(error: Exception) -> None:
    """Note a trace store connection error quietly: spans are a debugging aid, and the
    services' own connections report an unreachable NATS already."""
    log.debug("trace store connection: %r", error)


def _messages(records: list[dict[str, Any]]) -> list[bytes]:
    """Encode a trace's spans as JSON arrays of at most MESSAGE_BYTES each (one over the
    server's payload limit failed the export of the whole batch, every other trace in it
    lost); a span larger than that alone is left out."""
    whole = orjson.dumps(records)
    if len(whole) <= MESSAGE_BYTES:  # nearly always: one encoding
        return [whole]
    encoded = [orjson.dumps(record) for record in records]
    messages: list[bytes] = []
    part: list[bytes] = []
    size = 2
    for span in encoded:
        if len(span) + 2 > MESSAGE_BYTES:
            log.debug("a span of %d bytes not stored", len(span))
            continue
        if part and size + len(span) + 1 > MESSAGE_BYTES:
            messages.append(b"[" + b",".join(part) + b"]")
            part, size = [], 2
        part.append(span)
        size += len(span) + 1
    if part:
        messages.append(b"[" + b",".join(part) + b"]")
    return messages


class TraceStoreExporter(SpanExporter):
    """Export spans to the TRACES stream."""

    def __init__(self, nats_url: str, retention_seconds: float = 3600.0) -> None:
        self._url = nats_url
        self._retention = retention_seconds
        self._loop = uvloop.new_event_loop()  # as the services' own: less CPU a publish
        self._thread = threading.Thread(target=self._loop.run_forever, name="trace-store")
        self._thread.daemon = True
        self._thread.start()
        self._js: JetStreamContext | None = None
        self._nc: Any = None
        self._closed = False

    async def _jetstream(self) -> JetStreamContext:
        js = self._js
        if js is None:
            self._nc = await nats.connect(
                servers=nats_servers(self._url), name="trace-store", error_cb=_connection_error
            )
            js = self._nc.jetstream()
            await ensure_stream(js, self._retention)
            self._js = js
        return js

    async def _publish(self, spans: Sequence[ReadableSpan]) -> None:
        # One message per trace of the batch (a JSON array of its spans) under its first
        # index key, an empty one per further key; plain publishes: the stream stores them
        # without an acknowledgement each (a lost message costs a gap in a debugging aid;
        # waiting for hundreds of acks costs every event).
        await self._jetstream()
        nc = self._nc
        traces: dict[str, tuple[list[dict[str, Any]], dict[IndexKey, None]]] = {}
        for span in spans:
            record = span_record(span)
            records, keys = traces.setdefault(record["trace_id"], ([], {}))
            records.append(record)
            keys.update(dict.fromkeys(index_keys(record)))
        for trace_id, (records, keys) in traces.items():
            first, *others = keys or [None]
            for message in _messages(records):  # a trace is read from all its messages
                await nc.publish(trace_subject(trace_id, first), message)
            for key in others:
                await nc.publish(trace_subject(trace_id, key), b"")
        await nc.flush(timeout=PUBLISH_SECONDS)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Publish a batch of spans (from the span processor's thread)."""
        done: Future[None] = asyncio.run_coroutine_threadsafe(self._publish(spans), self._loop)
        try:
            done.result(timeout=PUBLISH_SECONDS)
        except (TimeoutError, OSError, nats.errors.Error) as error:
            log.warning("%d spans not stored: %r", len(spans), error)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Close the connection and stop the thread (once)."""
        if self._closed:
            return
        self._closed = True
        if self._nc is not None:
            asyncio.run_coroutine_threadsafe(self._nc.close(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


@dataclass
class ReadBudget:
    """What one lookup may still read from the stream, in messages and bytes."""

    messages: int = READ_MESSAGES
    bytes: int = READ_BYTES


@dataclass(frozen=True)
class StoredMessage:
    """A message of the stream as a direct get answers it."""

    subject: str
    seq: int
    data: bytes


@dataclass(frozen=True)
class BatchEnd:
    """The end of a direct-get batch: how many matching messages it left unread."""

    unread: int


@dataclass(frozen=True)
class StoredTrace:
    """A trace's stored spans, in start order; `complete` is False when the budget ran out."""

    spans: list[dict[str, Any]]
    complete: bool


def batch_reply(headers: Mapping[str, str], data: bytes) -> StoredMessage | BatchEnd:
    """Read one reply of a direct-get batch request (ADR-31): a message, or the end."""
    status = headers.get("Status", "")
    if not status:
        return StoredMessage(headers["Nats-Subject"], int(headers["Nats-Sequence"]), data)
    if status == "204":  # EOB
        return BatchEnd(int(headers.get("Nats-Num-Pending", "0")))
    if status in ("404", "503"):  # nothing matches; no stream (or none served directly) yet
        return BatchEnd(0)
    raise RuntimeError(f"direct get from {STREAM} failed: {status} {headers.get('Description')}")


async def _direct_batch(
    js: JetStreamContext, request: dict[str, Any], budget: ReadBudget
) -> tuple[list[StoredMessage], int]:
    """Read what a direct-get request matches, within the budget, in one request; return the
    messages and how many matching ones were left unread."""
    if budget.messages <= 0 or budget.bytes <= 0:
        return [], 1
    nc = connection_of(js)
    inbox = nc.new_inbox()
    out: list[StoredMessage] = []
    try:
        sub = await nc.subscribe(inbox)
        try:
            body = {**request, "batch": budget.messages, "max_bytes": budget.bytes}
            await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", orjson.dumps(body), reply=inbox)
            while True:
                msg = await sub.next_msg(timeout=READ_SECONDS)
                reply = batch_reply(
                    {str(k): str(v) for k, v in (msg.headers or {}).items()}, msg.data
                )
                if isinstance(reply, BatchEnd):
                    return out, reply.unread
                out.append(reply)
                budget.messages -= 1
                budget.bytes -= len(reply.data)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
    except (nats.errors.Error, OSError) as error:
        raise _unavailable(error) from error


async def read_trace(
    js: JetStreamContext, trace_id: str, budget: ReadBudget | None = None
) -> StoredTrace:
    """Return the stored spans of a trace, its oldest messages first, as many as the budget
    allows (a message holds a list of spans; index messages hold nothing)."""
    found, unread = await _direct_batch(
        js, {"next_by_subj": f"traces.{trace_id}.>"}, budget or ReadBudget()
    )
    spans: list[dict[str, Any]] = []
    for message in found:
        if message.data:
            stored = orjson.loads(message.data)
            spans.extend(stored if isinstance(stored, list) else [stored])
    spans.sort(key=lambda s: (s["start"], s["name"]))
    return StoredTrace(spans, complete=not unread)


async def instances_of_message(js: JetStreamContext, message_id: str) -> dict[str, list[str]]:
    """Return the traces stored for a messageId by the instances that got it: one request
    listing subjects (no message is read), at most the server's page of 100,000."""
    subjects = f"traces.*.{message_token(message_id)}.*"
    try:
        reply = await connection_of(js).request(
            f"$JS.API.STREAM.INFO.{STREAM}",
            orjson.dumps({"subjects_filter": subjects}),
            timeout=READ_SECONDS,
        )
    except (nats.errors.Error, OSError) as error:
        raise _unavailable(error) from error
    info = orjson.loads(reply.data)
    if "error" in info:
        if info["error"].get("err_code") == _NO_STREAM:
            return {}
        raise RuntimeError(f"stream info of {STREAM} failed: {info['error']}")
    listed: dict[str, int] = info.get("state", {}).get("subjects") or {}
    if int(info.get("total", 0)) > len(listed):
        raise _too_many(message_id)
    by_instance: dict[str, list[str]] = {}
    for subject in listed:
        _, trace_id, _, instance_id = subject.split(".")
        by_instance.setdefault(instance_id, []).append(trace_id)
    return by_instance


async def traces_of_message(
    js: JetStreamContext, message_id: str, listed: Mapping[str, Sequence[str]], budget: ReadBudget
) -> list[str]:
    """Return the trace ids of `instances_of_message` entries (of the instances the caller may
    read), oldest first by their newest message, in one request; FAILED_PRECONDITION when
    there are more than one lookup sorts."""
    if sum(map(len, listed.values())) > MULTI_LAST_SUBJECTS:
        raise _too_many(message_id)
    if not listed:
        return []
    token = message_token(message_id)
    found, unread = await _direct_batch(
        js, {"multi_last": [f"traces.*.{token}.{i}" for i in listed]}, budget
    )
    if unread:
        raise _too_many(message_id)
    order: dict[str, None] = {}
    for message in found:  # in stream order: a trace's place is that of its newest key
        trace_id = message.subject.split(".")[1]
        order.pop(trace_id, None)
        order[trace_id] = None
    return list(order)


def _too_many(message_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"messageId {message_id!r} has more journeys stored than one lookup sorts out; look "
        "one up by its trace id (`eventfn deliveries --failures` and `eventfn dead show` "
        "print them)"
    )


def _unavailable(error: BaseException) -> Unavailable:
    return Unavailable(f"the trace store (NATS) did not answer ({error!r}); retry shortly")
