"""The Retrier gRPC servicer: list, show, replay and purge dead letters, authorized by the
registry with the caller's own token."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

import grpc
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2 as pb
from eventfn_api.retrier.v1 import retrier_pb2_grpc
from eventfn_api.type.v1 import types_pb2
from services.common import names, streams
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.common.outcomes import OUTCOME_OF
from services.common.page_tokens import PageTokens
from services.common.registry_gate import RegistryGate
from services.common.request_ids import check_request_id
from services.common.request_times import request_time
from services.common.roles import may_administer_source
from services.common.tracer import get_tracer
from services.common.workspace_budget import WorkspaceBudget
from services.retrier.dead_letters import (
    BadDeadLetterId,
    DeadLetterStore,
    Letter,
    LetterId,
)
from services.retrier.letter_ids import LetterIds
from services.retrier.operations import (
    CHUNK,
    Operations,
    Progress,
    ReplayRecord,
    operation_message,
    request_digest,
)
from services.retrier.scheduler import DEAD_REASON, parse_time

log = logging.getLogger(__name__)
tracer = get_tracer("eventfn.retrier")
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
        start = request_time("start_time", request.start_time)
    if request.HasField("end_time"):
        end = request_time("end_time", request.end_time)
    if start is not None and end is not None and end <= start:
        raise InvalidArgument.field("end_time", "must be after start_time")
    return start, end


def duration_of(milliseconds: float) -> duration_pb2.Duration:
    """Convert milliseconds to a Duration."""
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(milliseconds=milliseconds))
    return out


def attempt_count(headers: dict[str, str], listed: int) -> int:
    """Return how many attempts an event had (the history keeps only the last 20)."""
    try:
        return max(int(headers.get(streams.ATTEMPT, "0")), listed)
    except ValueError:
        return listed


def trace_id_of(headers: dict[str, str]) -> str:
    """Return the trace id a stored message's traceparent names, or ""."""
    parts = headers.get(streams.TRACEPARENT, "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def dead_letter_message(letter: Letter, ids: LetterIds) -> pb.DeadLetter:
    """Describe one dead letter for the API (the last attempt's error with its stack)."""
    pack = letter.pack
    history = pack.history()
    # Older messages name no outcome per attempt: the last one was permanent unless the
    # retrier buried it (window passed, malformed).
    permanent = DEAD_REASON not in pack.headers
    attempts: list[pb.Attempt] = []
    for position, entry in enumerate(history):
        last = position == len(history) - 1
        outcome = OUTCOME_OF.get(str(entry.get("outcome", "")))
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
        name=names.dead_letter(pack.workspace_id, pack.instance_id, ids.show(letter.id)),
        message_id=letter.message_id,
        attempt_count=attempt_count(pack.headers, len(history)),
        event_json=letter.event.decode(errors="replace"),
        attempts=attempts,
        reason=pack.reason(),
        trace_id=trace_id_of(pack.headers),
        last_logs=pack.last_logs(),
        last_requests=[
            types_pb2.RequestTrace(
                method=str(r.get("method") or ""),
                url=str(r.get("url") or ""),
                status=int(r.get("status") or 0),  # type: ignore[arg-type]
                error=str(r.get("error") or ""),
                duration=duration_of(float(r.get("duration_ms") or 0.0)),  # type: ignore[arg-type]
            )
            for r in pack.last_requests()
        ],
    )
    first = _timestamp(pack.first_attempt_time())
    if first is not None:
        out.first_attempt_time.CopyFrom(first)
    out.dead_time.FromDatetime(pack.dead_time())
    return out


def chosen(
    parent: tuple[str, str], field: str, values: list[str], ids: LetterIds
) -> list[tuple[str, LetterId]]:
    """Read the dead letter names of a request: each must be a letter of `parent`, at most
    MAX_PAGE_SIZE of them (each is looked up in DEAD before the call is answered: 20,000
    held the shared retrier for seconds)."""
    if len(values) > MAX_PAGE_SIZE:
        raise InvalidArgument.field(
            field,
            f"at most {MAX_PAGE_SIZE} dead letters per call (a page of the list), got "
            f"{len(values)}: send the rest in further calls, or select by time",
        )
    out = []
    for i, value in enumerate(values):
        workspace_id, instance_id, letter = names.parse_dead_letter(f"{field}[{i}]", value)
        if (workspace_id, instance_id) != parent:
            raise InvalidArgument.field(f"{field}[{i}]", "is not a dead letter of `parent`")
        try:
            out.append((value, ids.read(letter)))
        except BadDeadLetterId as error:
            raise InvalidArgument.field(f"{field}[{i}]", str(error)) from None
    return out


def all_found(named: list[tuple[str, LetterId]], letters: list[Letter]) -> None:
    """Refuse named letters that are not the instance's (word for word like missing ones)."""
    found = {(letter.id.seq, letter.id.index or 0) for letter in letters}
    seqs = {seq for seq, _ in found}
    for name, letter_id in named:
        there = (
            letter_id.seq in seqs
            if letter_id.index is None
            else (letter_id.seq, letter_id.index) in found
        )
        if not there:
            raise NotFound("dead letter", name)


class RetrierServicer(retrier_pb2_grpc.RetrierServicer):
    """Serve the Retrier API over the DEAD stream."""

    def __init__(
        self,
        store: DeadLetterStore,
        gate: RegistryGate,
        pages: PageTokens,
        operations: Operations,
        replays: WorkspaceBudget,
        letter_ids: LetterIds,
    ) -> None:
        self._ids = letter_ids
        self._replays = replays
        self._store = store
        self._gate = gate
        self._pages = pages
        self._operations = operations

    async def _writable(
        self, context: Ctx, parent: str, action: str
    ) -> tuple[res.Instance, rpb.WhoAmIResponse]:
        """Return the instance and the caller if the caller may replay or purge its letters."""
        workspace_id, instance_id = names.parse_instance("parent", parent)
        try:
            instance = await self._gate.instance(context, parent)
        except NotFound:
            # The instance may be gone while its dead letters remain: say so to members of
            # the same workspace; to anyone else it stays NOT_FOUND.
            me = await self._gate.whoami(context)
            # Another workspace's caller learns nothing, not even from the time a scan takes.
            if names.last(me.workspace.name) != workspace_id or not streams.is_token(
                instance_id  # no letter was ever stored under it
            ):
                raise
            async for pack in self._store.scan(instance_id):
                if pack.workspace_id == workspace_id:
                    raise FailedPrecondition(
                        f"instance {parent!r} was deleted (or its function was): its dead "
                        f"letters cannot be {action}ed to it; they expire with the DEAD "
                        "stream's retention"
                    ) from None
                break
            raise
        me = await self._gate.whoami(context)
        if not may_administer_source(me.member, names.last(instance.source)):
            raise PermissionDenied(
                f"{action} of dead letters needs Source Admin of source "
                f"{instance.source!r} (or Workspace Owner)"
            )
        return instance, me

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: Ctx
    ) -> pb.ListDeadLettersResponse:
        """List dead letters of an instance, newest first (a page may be short: see page())."""
        workspace_id, instance_id = names.parse_instance("parent", request.parent)
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 1..{MAX_PAGE_SIZE}, got {size}")
        start, end = _range(request)
        await self._gate.instance(context, request.parent)
        last = self._pages.read("ListDeadLetters", workspace_id, request)
        before = None
        if last is not None:
            if len(last) != 2 or not all(isinstance(v, int) for v in last):
                raise InvalidArgument.field("page_token", "is not a token of this list")
            before = LetterId(last[0], last[1])
        letters, cursor = await self._store.page(
            workspace_id, instance_id, start=start, end=end, size=size, before=before
        )
        token = ""
        if cursor is not None:
            token = self._pages.issue(
                "ListDeadLetters", workspace_id, request, [cursor.seq, cursor.index or 0]
            )
        return pb.ListDeadLettersResponse(
            dead_letters=[dead_letter_message(letter, self._ids) for letter in letters],
            next_page_token=token,
        )

    async def GetDeadLetter(
        self, request: pb.GetDeadLetterRequest, context: Ctx
    ) -> pb.GetDeadLetterResponse:
        """Show one dead letter with its history."""
        workspace_id, instance_id, letter = names.parse_dead_letter("name", request.name)
        try:
            letter_id = self._ids.read(letter)
        except BadDeadLetterId as error:
            raise InvalidArgument.field("name", str(error)) from None
        missing = NotFound("dead letter", request.name)
        # Sequences are global: authenticate before looking, and answer a letter of another
        # workspace, or of an instance the caller may not read, word for word like one that
        # does not exist.
        me = await self._gate.whoami(context)
        if names.last(me.workspace.name) != workspace_id:
            raise missing
        pack = await self._store.pack(letter_id.seq)
        if pack is None or pack.workspace_id != workspace_id or pack.instance_id != instance_id:
            raise missing
        try:
            await self._gate.instance(context, names.INSTANCE.name(workspace_id, instance_id))
        except (NotFound, PermissionDenied):
            raise missing from None
        letters = await self._store.select(
            pack.instance_id, [LetterId(letter_id.seq, letter_id.index or 0)]
        )
        if not letters:
            raise missing
        return pb.GetDeadLetterResponse(dead_letter=dead_letter_message(letters[0], self._ids))

    async def ReplayDeadLetters(
        self, request: pb.ReplayDeadLettersRequest, context: Ctx
    ) -> operations_pb2.Operation:
        """Check a replay, start it as an operation and answer the operation."""
        parent = names.parse_instance("parent", request.parent)
        named = chosen(parent, "names", list(request.names), self._ids)
        start, end = _range(request)
        digest = request_digest(request)
        if request.request_id:
            check_request_id(request.request_id)
        # Before any lookup of the request_id: a stranger learns nothing of its use.
        instance, me = await self._writable(context, request.parent, "replay")
        if request.request_id:
            earlier = await self._operations.earlier(parent[0], request.request_id, digest)
            if earlier is not None:
                return operation_message(earlier)
        version_id = ""
        if request.version and request.version != instance.version:
            version = await self._gate.version(context, request.version)
            if version.name.rsplit("/versions/", 1)[0] != instance.function:
                raise InvalidArgument.field(
                    "version", "is not a version of the instance's function"
                )
            version_id = names.last(version.name)
        if instance.state != res.Instance.STATE_ENABLED:
            raise FailedPrecondition(
                f"instance {request.parent!r} is disabled: replayed events would be "
                "discarded; enable it first"
            )
        self._replays.take(parent[0])  # authorized, checked, not a retry: before the scan
        total = up_to_seq = 0
        if named:  # at most MAX_PAGE_SIZE packs read
            letters = await self._store.select(parent[1], [letter_id for _, letter_id in named])
            try:
                all_found(named, letters)
            except NotFound:  # named letters looked up, no more: nothing started, nothing spent
                self._replays.give_back(parent[0])
                raise
            total = len(letters)
        else:  # all of the instance's: counted and replayed by the operation, streamed
            up_to_seq = await self._store.last_seq()
        record = self._operations.new_record(
            parent[0],
            request.parent,
            me.member.name,
            digest,
            letter_ids=[str(letter_id) for _, letter_id in named],
            start=start.isoformat() if start else None,
            end=end.isoformat() if end else None,
            version_id=version_id,
            total=total,
            up_to_seq=up_to_seq,
        )
        if request.request_id and not await self._operations.claim(
            parent[0], request.request_id, record
        ):
            # A twin with the same request_id started first: answer its operation.
            earlier = await self._operations.earlier(parent[0], request.request_id, digest)
            if earlier is not None:
                return operation_message(earlier)
        await self._operations.write(record)
        self._operations.run(record, self.replay)
        return operation_message(record)

    async def replay(self, record: ReplayRecord, progress: Progress) -> int:
        """Replay a record's letters chunk by chunk, reporting progress; audit the replay."""
        _, instance_id = names.parse_instance("instance", record.instance)
        ids = [LetterId.parse(text) for text in record.letter_ids]
        start = datetime.fromisoformat(record.start) if record.start else None
        end = datetime.fromisoformat(record.end) if record.end else None
        replayed = record.replayed
        with tracer.start_as_current_span("dead.replay") as span:
            span.set_attribute("eventfn.instance_id", instance_id)
            if ids:
                letters = await self._store.select(instance_id, ids)  # MAX_PAGE_SIZE at most
                for first in range(0, len(letters), CHUNK):
                    chunk = letters[first : first + CHUNK]
                    replayed += await self._store.replay(chunk, version_id=record.version_id)
                    await progress(replayed)
            else:  # streamed: the instance's letters are not bounded
                await self._bound_and_count(record, instance_id, start, end, progress)
                async for packs in self._store.chunks(
                    instance_id, start=start, end=end, up_to_seq=record.up_to_seq, letters=CHUNK
                ):
                    replayed += await self._store.replay_packs(packs, version_id=record.version_id)
                    await progress(replayed)
            span.set_attribute("eventfn.replayed", replayed)
        await self._gate.record(
            record.actor,
            record.instance,
            res.AUDIT_ACTION_DEAD_LETTERS_REPLAY,
            {
                "replayed": replayed,
                "dead_letters": [
                    names.dead_letter(
                        *names.parse_instance("instance", record.instance), self._ids.show(i)
                    )
                    for i in ids
                ]
                or "all",
                "version_id": record.version_id or "deployed",
                "operation": record.name,
            },
            request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, record.name)),
        )
        return replayed

    async def _bound_and_count(
        self,
        record: ReplayRecord,
        instance_id: str,
        start: datetime | None,
        end: datetime | None,
        progress: Progress,
    ) -> None:
        """Bound a replay of all letters and count them, unless done before it was taken over.

        A record of an older retrier names no bound: the stream's end now is its bound. One
        taken over after its count keeps it (the letters replayed since have left DEAD).
        """
        if not record.up_to_seq:
            record.up_to_seq = await self._store.last_seq()
        if not record.total:
            left = await self._store.count(
                instance_id, start=start, end=end, up_to_seq=record.up_to_seq
            )
            record.total = record.replayed + left
        await progress(record.replayed)

    async def PurgeDeadLetters(
        self, request: pb.PurgeDeadLettersRequest, context: Ctx
    ) -> pb.PurgeDeadLettersResponse:
        """Delete dead letters of an instance (the others of their packs stay)."""
        parent = names.parse_instance("parent", request.parent)
        named = chosen(parent, "names", list(request.names), self._ids)
        end = None
        if request.HasField("end_time"):
            end = request_time("end_time", request.end_time)
        _, me = await self._writable(context, request.parent, "purge")
        if named:  # at most MAX_PAGE_SIZE packs read
            letters = await self._store.select(parent[1], [letter_id for _, letter_id in named])
            all_found(named, letters)
            purged = await self._store.purge(letters)
        else:  # streamed; those dead-lettered while it runs are left
            up_to_seq = await self._store.last_seq()
            purged = await self._store.purge_all(parent[1], end=end, up_to_seq=up_to_seq)
        await self._gate.record(
            me.member.name,
            request.parent,
            res.AUDIT_ACTION_DEAD_LETTERS_PURGE,
            {"purged": purged, "dead_letters": list(request.names) or "all"},
        )
        return pb.PurgeDeadLettersResponse(purged=purged)
