"""The Retrier gRPC servicer: list, show, replay and purge dead letters, authorized by the
registry with the caller's own token."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry import trace

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from eventfn_api.retrier.v1 import retrier_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.page_tokens import PageTokens
from services.common.registry_gate import RegistryGate
from services.common.roles import may_administer_source
from services.retrier.dead_letters import (
    BadDeadLetterId,
    DeadLetterStore,
    Letter,
    LetterId,
)
from services.retrier.scheduler import DEAD_REASON, parse_time

log = logging.getLogger(__name__)
tracer = trace.get_tracer("eventfn.retrier")
Ctx = grpc.aio.ServicerContext
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def _range(
    request: pb.ListDeadLettersRequest | pb.ReplayDeadLettersRequest,
) -> tuple[datetime | None, datetime | None]:
    start = end = None
    if request.HasField("start_time"):
        start = request.start_time.ToDatetime(tzinfo=UTC)
    if request.HasField("end_time"):
        end = request.end_time.ToDatetime(tzinfo=UTC)
    if start is not None and end is not None and end <= start:
        raise InvalidArgument.field("end_time", "must be after start_time")
    return start, end


HISTORY_OUTCOMES = {
    "retry": types_pb2.OUTCOME_RETRY,
    "failure": types_pb2.OUTCOME_FAILED,
    "discard": types_pb2.OUTCOME_DISCARDED,
    "delivered": types_pb2.OUTCOME_DELIVERED,
}


def dead_letter_message(letter: Letter) -> pb.DeadLetter:
    """Describe one dead letter for the API (the last attempt's error with its stack)."""
    pack = letter.pack
    history = pack.history()
    # Older messages name no outcome per attempt: the last one was permanent unless the
    # retrier buried it (window passed, malformed).
    permanent = DEAD_REASON not in pack.headers
    attempts: list[pb.Attempt] = []
    for position, entry in enumerate(history):
        last = position == len(history) - 1
        outcome = HISTORY_OUTCOMES.get(str(entry.get("outcome", "")))
        if outcome is None:
            outcome = types_pb2.OUTCOME_FAILED if permanent and last else types_pb2.OUTCOME_RETRY
        attempt = pb.Attempt(
            outcome=outcome,
            error=types_pb2.HandlerError(
                type=str(entry.get("type", "")),
                message=str(entry.get("error", "")),
                stack=pack.last_stack() if last else "",
            ),
        )
        try:
            attempt.time.FromDatetime(parse_time(str(entry.get("time", ""))))
        except ValueError:
            pass
        attempts.append(attempt)
    out = pb.DeadLetter(
        id=str(letter.id),
        instance_id=pack.instance_id,
        message_id=letter.message_id,
        event_json=letter.event.decode(errors="replace"),
        attempts=attempts,
        reason=pack.reason(),
        last_logs=pack.last_logs(),
        last_requests=[
            types_pb2.RequestTrace(
                method=str(r.get("method") or ""),
                url=str(r.get("url") or ""),
                status=int(r.get("status") or 0),  # type: ignore[arg-type]
                error=str(r.get("error") or ""),
                duration_ms=float(r.get("duration_ms") or 0.0),  # type: ignore[arg-type]
            )
            for r in pack.last_requests()
        ],
    )
    first = _timestamp(pack.first_attempt_time())
    if first is not None:
        out.first_attempt_time.CopyFrom(first)
    out.dead_time.FromDatetime(pack.dead_time())
    return out


def _ids(values: list[str], field: str) -> list[LetterId]:
    try:
        return [LetterId.parse(v) for v in values]
    except BadDeadLetterId as error:
        raise InvalidArgument.field(field, str(error)) from None


def all_found(raw_ids: list[str], ids: list[LetterId], letters: list[Letter]) -> None:
    """Refuse named letters that are not the instance's (word for word like missing ones)."""
    found = {(letter.id.seq, letter.id.index or 0) for letter in letters}
    seqs = {seq for seq, _ in found}
    for raw, letter_id in zip(raw_ids, ids, strict=True):
        there = (
            letter_id.seq in seqs
            if letter_id.index is None
            else (letter_id.seq, letter_id.index) in found
        )
        if not there:
            raise NotFound("dead letter", raw)


class RetrierServicer(retrier_pb2_grpc.RetrierServicer):
    """Serve the Retrier API over the DEAD stream."""

    def __init__(self, store: DeadLetterStore, gate: RegistryGate, pages: PageTokens) -> None:
        self._store = store
        self._gate = gate
        self._pages = pages

    async def _writable(
        self, context: Ctx, instance_id: str, action: str
    ) -> tuple[rpb.GetInstanceResponse, rpb.WhoAmIResponse]:
        """Return the instance and the caller if the caller may replay or purge its letters."""
        try:
            found = await self._gate.instance(context, instance_id)
        except NotFound:
            # The instance may be gone while its dead letters remain: say so to members of
            # the same workspace; to anyone else it stays NOT_FOUND.
            me = await self._gate.whoami(context)
            async for pack in self._store.scan(instance_id):
                if pack.workspace_id == me.member.workspace_id:
                    raise FailedPrecondition(
                        f"instance {instance_id!r} was deleted (or its function was): its dead "
                        f"letters cannot be {action}ed to it; they expire with the DEAD "
                        "stream's retention"
                    ) from None
                break
            raise
        me = await self._gate.whoami(context)
        if not may_administer_source(me.member, found.instance.source_id):
            raise PermissionDenied(
                f"{action} of dead letters needs Source Admin of source "
                f"{found.instance.source_id!r} (or Workspace Owner)"
            )
        return found, me

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Ctx
    ) -> pb.ListDeadLettersResponse:
        """List dead letters of an instance, newest first."""
        if not request.instance_id:
            raise InvalidArgument.field("instance_id", "required")
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 1..{MAX_PAGE_SIZE}, got {size}")
        start, end = _range(request)
        found = await self._gate.instance(context, request.instance_id)
        scope = found.instance.workspace_id
        last = self._pages.read("ListDeadLetters", scope, request)
        before = None
        if last is not None:
            if len(last) != 2 or not all(isinstance(v, int) for v in last):
                raise InvalidArgument.field("page_token", "is not a token of this list")
            before = LetterId(last[0], last[1])
        letters, cursor = await self._store.page(
            request.instance_id, start=start, end=end, size=size, before=before
        )
        token = ""
        if cursor is not None:
            token = self._pages.issue(
                "ListDeadLetters", scope, request, [cursor.seq, cursor.index or 0]
            )
        return pb.ListDeadLettersResponse(
            dead_letters=[dead_letter_message(letter) for letter in letters],
            next_page_token=token,
        )

    async def GetDeadLetter(
        self, request: pb.GetDeadLetterRequest, context: Ctx
    ) -> pb.GetDeadLetterResponse:
        """Show one dead letter with its history."""
        if not request.dead_letter_id:
            raise InvalidArgument.field("dead_letter_id", "required")
        (letter_id,) = _ids([request.dead_letter_id], "dead_letter_id")
        missing = NotFound("dead letter", request.dead_letter_id)
        # Ids are global stream sequences: authenticate before looking, and answer a letter
        # of another workspace, or of an instance the caller may not read, word for word
        # like one that does not exist, never naming its instance.
        me = await self._gate.whoami(context)
        pack = await self._store.pack(letter_id.seq)
        if pack is None or pack.workspace_id != me.workspace.id:
            raise missing
        try:
            await self._gate.instance(context, pack.instance_id)
        except (NotFound, PermissionDenied):
            raise missing from None
        letters = await self._store.select(
            pack.instance_id, [LetterId(letter_id.seq, letter_id.index or 0)]
        )
        if not letters:
            raise missing
        return pb.GetDeadLetterResponse(dead_letter=dead_letter_message(letters[0]))

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Ctx
    ) -> pb.ReplayDeadLettersResponse:
        """Send dead letters back to their instance as first attempts; they leave DEAD."""
        if not request.instance_id:
            raise InvalidArgument.field("instance_id", "required")
        ids = _ids(list(request.dead_letter_ids), "dead_letter_ids")
        start, end = _range(request)
        found, me = await self._writable(context, request.instance_id, "replay")
        version_id = ""
        if request.version_id and request.version_id != found.instance.version_id:
            version = (await self._gate.version(context, request.version_id)).version
            if version.function_id != found.instance.function_id:
                raise InvalidArgument.field(
                    "version_id", "is not a version of the instance's function"
                )
            version_id = version.id
        if not found.instance.enabled:
            raise FailedPrecondition(
                f"instance {request.instance_id!r} is disabled: replayed events would be "
                "discarded; enable it first"
            )
        with tracer.start_as_current_span("dead.replay") as span:
            span.set_attribute("eventfn.instance_id", request.instance_id)
            letters = await self._store.select(request.instance_id, ids, start=start, end=end)
            all_found(list(request.dead_letter_ids), ids, letters)
            replayed = await self._store.replay(letters, version_id=version_id)
            span.set_attribute("eventfn.replayed", replayed)
        await self._gate.record(
            me,
            request.instance_id,
            "dead.replay",
            {
                "replayed": replayed,
                "dead_letter_ids": list(request.dead_letter_ids) or "all",
                "version_id": version_id or found.instance.version_id,
            },
        )
        return pb.ReplayDeadLettersResponse(replayed=replayed)

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: Ctx
    ) -> pb.PurgeDeadLettersResponse:
        """Delete dead letters of an instance (a letter's whole pack goes with it)."""
        if not request.instance_id:
            raise InvalidArgument.field("instance_id", "required")
        ids = _ids(list(request.dead_letter_ids), "dead_letter_ids")
        end = None
        if request.HasField("end_time"):
            end = request.end_time.ToDatetime(tzinfo=UTC)
        _, me = await self._writable(context, request.instance_id, "purge")
        letters = await self._store.select(request.instance_id, ids, end=end)
        all_found(list(request.dead_letter_ids), ids, letters)
        purged = await self._store.purge(letters)
        await self._gate.record(
            me,
            request.instance_id,
            "dead.purge",
            {"purged": purged, "dead_letter_ids": list(request.dead_letter_ids) or "all"},
        )
        return pb.PurgeDeadLettersResponse(purged=purged)
