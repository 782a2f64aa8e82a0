"""A bounded store of recent spans on the platform's own JetStream, so an event's journey can be
shown (`eventfn trace`) without running a tracing backend.

Spans go, as compact JSON, to the TRACES stream, one message per trace and batch of spans,
under `traces.<trace id>.<sha1 of the first messageId they name>` (`_` when they name none);
each further messageId they name gets an empty message under `traces.<trace id>.<its sha1>`.
So a trace is read from `traces.<trace id>.>` and a messageId's traces found under
`traces.*.<sha1>`, and a single event's spans cost one message per batch, index included
(releases before stored spans under `traces.<trace id>` and an index message with the trace
id under `traces.msg.<sha1>`; both are still read). The stream keeps an hour
(EVENTFN_TRACE_RETENTION_SECONDS) and at most 128 MiB, dropping the oldest first, in memory:
it is a debugging aid, never in the way of events, so its messages are not written to disk
(with `sync_interval: always` every stored message costs a disk sync: a file stream made
tracing the largest cost per event). A NATS restart empties it. The exporter runs its own
NATS connection on its own thread (span processors export from a thread of theirs).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from services.common.settings import nats_servers
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE

log = logging.getLogger(__name__)

STREAM = "TRACES"
MAX_BYTES = 128 * 1024 * 1024
PUBLISH_SECONDS = 5.0


NO_MESSAGE = "_"  # the last token of a trace message whose spans name no messageId
LEGACY_INDEX = "msg"  # `traces.msg.<sha1>`: an index message of earlier releases


def message_token(message_id: str) -> str:
    """Return the subject token standing for a messageId."""
    return hashlib.sha1(message_id.encode(), usedforsecurity=False).hexdigest()


def trace_subject(trace_id: str, message_id: str | None = None) -> str:
    """Return the subject of a trace's spans naming (first) this messageId."""
    return f"traces.{trace_id}.{NO_MESSAGE if message_id is None else message_token(message_id)}"


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


class TraceStoreExporter(SpanExporter):
    """Export spans to the TRACES stream."""

    def __init__(self, nats_url: str, retention_seconds: float = 3600.0) -> None:
        self._url = nats_url
        self._retention = retention_seconds
        self._loop = asyncio.new_event_loop()
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
        # messageId, an empty one per further messageId; plain publishes: the stream stores
        # them without an acknowledgement each (a lost message costs a gap in a debugging
        # aid; waiting for hundreds of acks costs every event).
        await self._jetstream()
        nc = self._nc
        traces: dict[str, tuple[list[dict[str, Any]], dict[str, None]]] = {}
        for span in spans:
            record = span_record(span)
            records, named = traces.setdefault(record["trace_id"], ([], {}))
            records.append(record)
            named.update(
                dict.fromkeys(map(str, record["attributes"].get(MESSAGE_IDS_ATTRIBUTE, ())))
            )
        for trace_id, (records, named) in traces.items():
            first, *others = named or [None]
            await nc.publish(trace_subject(trace_id, first), orjson.dumps(records))
            for message_id in others:
                await nc.publish(trace_subject(trace_id, message_id), b"")
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


async def read_trace(
    js: JetStreamContext, trace_id: str, limit: int = 2000
) -> list[dict[str, Any]]:
    """Return the stored spans of a trace, in start order (a message holds a list of them, or
    one, as releases before grouping stored them; index messages hold nothing)."""
    spans: list[dict[str, Any]] = []
    for subject in (f"traces.{trace_id}.>", f"traces.{trace_id}"):
        for _, data in await _read_subject(js, subject, limit):
            if data:
                stored = orjson.loads(data)
                spans.extend(stored if isinstance(stored, list) else [stored])
    return sorted(spans, key=lambda s: (s["start"], s["name"]))


async def traces_of_message(js: JetStreamContext, message_id: str) -> list[str]:
    """Return the trace ids stored for a messageId, oldest first, without repeats."""
    ids: list[str] = []
    for subject, data in await _read_subject(js, f"traces.*.{message_token(message_id)}", 100):
        trace_id = subject.split(".")[1]
        ids.append(data.decode() if trace_id == LEGACY_INDEX else trace_id)
    return list(dict.fromkeys(ids))


async def _read_subject(js: JetStreamContext, subject: str, limit: int) -> list[tuple[str, bytes]]:
    """Read the stored messages matching a subject (wildcards allowed), oldest first, as
    (subject, data); one request per message."""
    out: list[tuple[str, bytes]] = []
    seq = 1
    while len(out) < limit:
        try:
            msg = await js.get_msg(STREAM, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        out.append((msg.subject or subject, msg.data or b""))
        seq = (msg.seq or seq) + 1
    return out
