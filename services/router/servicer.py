"""Router gRPC service: Ingest and IngestStream, with the HTTP API's validation and durability."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common.errors import FieldViolation, InvalidArgument, Unauthenticated, Unavailable
from services.router.errors import BodyTooLargeError, InvalidRequestError, RouterError
from services.router.normalize import BATCH_MAX_BYTES, normalize_events, parse_json
from services.router.publisher import (
    Ingestor,
    NotReadyError,
    StorageUnavailableError,
    UnknownWriteKeyError,
)

# Batches of one IngestStream call stored concurrently; answers still go out in order.
STREAM_WINDOW = 32


def parse_events_json(events_json: bytes, now: datetime) -> list[dict[str, Any]]:
    """Parse and normalize the JSON array of an Ingest request, raising domain errors."""
    if len(events_json) > BATCH_MAX_BYTES:
        raise BodyTooLargeError(BATCH_MAX_BYTES)
    items = parse_json(events_json)
    if type(items) is not list:
        raise InvalidRequestError("events_json must be a JSON array of events")
    events = normalize_events(items, now)
    for event in events:
        # The write key travels in the request, never in stored events.
        event.pop("writeKey", None)
    return events


def _trace_metadata(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    traceparent = tracestate = None
    for key, value in context.invocation_metadata() or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "traceparent":
            traceparent = text
        elif key == "tracestate":
            tracestate = text
    return traceparent, tracestate


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Ingest events for a source's write key over gRPC."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def _ingest(
        self, write_key: str, events_json: bytes, context: grpc.aio.ServicerContext
    ) -> tuple[int, list[str]]:
        """Validate, route and store one batch; map refusals to domain errors."""
        try:
            self._ingestor.source(write_key)  # refuse before parsing when not ready / unknown
            events = parse_events_json(events_json, datetime.now(UTC))
            traceparent, tracestate = _trace_metadata(context)
            await self._ingestor.ingest(
                write_key, events, traceparent=traceparent, tracestate=tracestate
            )
        except UnknownWriteKeyError as exc:
            raise Unauthenticated(exc.message) from None
        except (NotReadyError, StorageUnavailableError) as exc:
            raise Unavailable(exc.message) from None
        except InvalidRequestError as exc:
            field = "events_json"
            if exc.index is not None:
                field += f"[{exc.index}]"
                if exc.field:
                    field += f".{exc.field}"
            raise InvalidArgument(exc.message, [FieldViolation(field, exc.message)]) from None
        except RouterError as exc:
            raise InvalidArgument.field("events_json", exc.message) from None
        return len(events), [str(e["messageId"]) for e in events]

    async def Ingest(
        self, request: pb.IngestRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestResponse:
        """Store a batch of events once every pack is acknowledged."""
        accepted, message_ids = await self._ingest(request.write_key, request.events_json, context)
        return pb.IngestResponse(accepted=accepted, message_ids=message_ids)

    async def IngestStream(
        self,
        request_iterator: AsyncIterator[pb.IngestStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.IngestStreamResponse]:
        """Store streamed batches, many in flight, answering in order; an error ends it."""
        window: asyncio.Queue[asyncio.Task[tuple[int, list[str]]] | None] = asyncio.Queue(
            STREAM_WINDOW
        )

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(
                        self._ingest(request.write_key, request.events_json, context)
                    )
                    await window.put(task)  # blocks when STREAM_WINDOW batches are in flight
            finally:
                await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await window.get()) is not None:
                accepted, message_ids = await task
                yield pb.IngestStreamResponse(accepted=accepted, message_ids=message_ids)
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            while not window.empty():
                pending = window.get_nowait()
                if pending is not None:
                    pending.cancel()
