"""Router gRPC service: Ingest and IngestStream, with the HTTP API's validation and durability."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc

from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common.call_limits import vouch
from services.common.errors import (
    EventfnError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.rpc import status_message, unexpected
from services.router.errors import BodyTooLargeError, InvalidRequestError, RouterError
from services.router.normalize import (
    BATCH_MAX_BYTES,
    MAX_EVENT_ERRORS,
    normalize_events,
    parse_json,
)
from services.router.publisher import (
    Ingestor,
    NotReadyError,
    OverBudgetError,
    StorageUnavailableError,
    UnknownWriteKeyError,
)

# Batches of one IngestStream call stored concurrently; answers still go out in order.
STREAM_WINDOW = 32


def grpc_text(message: str) -> str:
    """Word the HTTP API's refusal for gRPC callers: the batch is events_json, not a body."""
    for http, rpc in (("decompressed body", "events_json"), ("body", "events_json")):
        if message.startswith(http):
            return rpc + message[len(http) :]
    return message


def parse_events_json(events_json: bytes, now: datetime) -> list[dict[str, Any]]:
    """Parse and normalize the JSON array of an Ingest request; refuse it naming every bad
    event (nothing of a refused batch is stored)."""
    if len(events_json) > BATCH_MAX_BYTES:
        raise BodyTooLargeError(BATCH_MAX_BYTES)
    items = parse_json(events_json)
    if type(items) is not list:
        raise InvalidRequestError("events_json must be a JSON array of events")
    errors: list[InvalidRequestError] = []
    events = normalize_events(items, now, errors=errors)
    if errors:
        raise BadEvents(errors, len(items), all_named=len(errors) < MAX_EVENT_ERRORS)
    for event in events:
        # The write key travels in the request, never in stored events.
        event.pop("writeKey", None)
    return events


class BadEvents(InvalidArgument):
    """A batch with bad events: each named by index (and field), up to MAX_EVENT_ERRORS of
    them, nothing stored."""

    def __init__(self, errors: list[InvalidRequestError], total: int, *, all_named: bool) -> None:
        self.events = [
            pb.EventError(index=e.index or 0, field=e.field or "", reason=grpc_text(e.reason))
            for e in errors
        ]
        first = self.events[0]
        count = f"{len(errors)}" if all_named else f"at least {len(errors)} (the first named)"
        super().__init__(
            f"{count} of {total} events are invalid, nothing was stored; the first, "
            f"events_json[{first.index}]: {first.reason}",
            [
                FieldViolation(
                    f"events_json[{e.index}]" + (f".{e.field}" if e.field else ""), e.reason
                )
                for e in self.events
            ],
        )


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Ingest events for a source's write key over gRPC."""

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor

    async def _ingest(
        self, write_key: str, events_json: bytes, context: grpc.aio.ServicerContext
    ) -> tuple[int, list[str]]:
        """Validate, route and store one batch; map refusals to domain errors."""
        if not write_key:
            raise InvalidArgument.field("write_key", "required: the source's write key")
        try:
            self._ingestor.source(write_key)  # refuse before parsing when not ready / unknown
            vouch()  # a stream with a known write key is ended after strangers' idle calls
            events = parse_events_json(events_json, datetime.now(UTC))
            # The call's server span continues the caller's trace (from its metadata); the
            # ingest span is its child.
            message_ids = await self._ingestor.ingest(write_key, events, sender=context.peer())
        except UnknownWriteKeyError:
            raise Unauthenticated(
                "write_key: unknown write key; it may have been rotated: use the source's "
                "current one (GetSource)"
            ) from None
        except (NotReadyError, StorageUnavailableError) as exc:
            raise Unavailable(exc.message) from None
        except OverBudgetError as exc:
            self._ingestor.count_rejected("too_many_requests")  # as the HTTP API's 429
            raise ResourceExhausted(exc.message, retry_after=exc.retry_after) from None
        except InvalidRequestError as exc:
            message = grpc_text(exc.message)
            raise InvalidArgument(message, [FieldViolation("events_json", message)]) from None
        except RouterError as exc:
            raise InvalidArgument.field("events_json", grpc_text(exc.message)) from None
        return len(events), message_ids

    async def Ingest(
        self, request: pb.IngestRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestResponse:
        """Store a batch of events once every pack is acknowledged."""
        accepted, message_ids = await self._ingest(request.write_key, request.events_json, context)
        return pb.IngestResponse(accepted=accepted, message_ids=message_ids)

    async def _answer(
        self, sequence: int, request: pb.IngestStreamRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestStreamResponse:
        """Store one streamed batch; a refusal is its answer, not the stream's end."""
        try:
            accepted, message_ids = await self._ingest(
                request.write_key, request.events_json, context
            )
        except EventfnError as error:
            return pb.IngestStreamResponse(
                sequence=sequence,
                error=status_message(error),
                event_errors=error.events if isinstance(error, BadEvents) else [],
            )
        except Exception as error:  # a bug: logged under a correlation id, this batch INTERNAL
            return pb.IngestStreamResponse(
                sequence=sequence,
                error=status_message(unexpected("/eventfn.router.v1.Router/IngestStream", error)),
            )
        return pb.IngestStreamResponse(
            sequence=sequence, accepted=accepted, message_ids=message_ids
        )

    async def IngestStream(
        self,
        request_iterator: AsyncIterator[pb.IngestStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.IngestStreamResponse]:
        """Store streamed batches, many in flight, answering each in order."""
        window: asyncio.Queue[asyncio.Task[pb.IngestStreamResponse] | None] = asyncio.Queue(
            STREAM_WINDOW
        )

        async def read() -> None:
            try:
                sequence = 0
                async for request in request_iterator:
                    task = asyncio.create_task(self._answer(sequence, request, context))
                    sequence += 1
                    await window.put(task)  # blocks when STREAM_WINDOW batches are in flight
            finally:
                await window.put(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await window.get()) is not None:
                yield await task
            await reader  # surfaces a failure to read the stream
        finally:
            reader.cancel()
            while not window.empty():
                pending = window.get_nowait()
                if pending is not None:
                    pending.cancel()
