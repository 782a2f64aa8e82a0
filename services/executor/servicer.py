"""The Executor gRPC servicer: Preview, delivery records and health."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import orjson
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from nats.js import JetStreamContext

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common import names, streams
from services.common.deliveries.reads import DeliveryReads
from services.common.deliveries.recorder import COUNTERS
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.outcomes import OUTCOME_OF
from services.common.page_tokens import PageTokens
from services.common.pull import NATS_ERRORS
from services.common.registry_gate import RegistryGate
from services.common.request_times import request_time
from services.common.roles import may_write_function
from services.common.workspace_budget import WorkspaceBudget
from services.executor.policy import health
from services.executor.tail import EventTail
from services.executor.traces import WorkspaceOf, get_trace
from services.runtime import InvalidInvocation, RuntimePool
from services.runtime import RequestTrace as RuntimeTrace
from services.runtime.preview import PreviewResult, run_preview
from services.runtime.settings_schema import TYPE_NAMES
from services.runtime.syntax import check_syntax

Ctx = grpc.aio.ServicerContext
HEALTH_WINDOW = timedelta(minutes=15)
PREVIEW_LOG_CAP = 4096


def request_trace(t: RuntimeTrace) -> types_pb2.RequestTrace:
    """Convert a runtime request trace to its proto."""
    return types_pb2.RequestTrace(
        method=t.method,
        url=t.url,
        request_headers=[types_pb2.Header(name=k, value=v) for k, v in t.request_headers],
        request_body=t.request_body or "",
        status=t.status or 0,
        response_headers=[types_pb2.Header(name=k, value=v) for k, v in t.response_headers],
        response_body=t.response_body or "",
        error=t.error or "",
        duration=duration_of(t.duration_ms),
    )


def duration_of(milliseconds: float) -> duration_pb2.Duration:
    """Convert milliseconds to a Duration."""
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(milliseconds=milliseconds))
    return out


def preview_response(result: PreviewResult) -> pb.PreviewResponse:
    """Describe a preview run for the RPC."""
    logs = "\n".join(f"{line.level}: {line.message}" for line in result.logs)
    response = pb.PreviewResponse(
        outcome=OUTCOME_OF[result.outcome],
        result_json="undefined" if result.result is None else orjson.dumps(result.result).decode(),
        logs=logs[:PREVIEW_LOG_CAP],
        logs_truncated=result.logs_truncated or len(logs) > PREVIEW_LOG_CAP,
        requests=[request_trace(t) for t in result.requests],
        duration=duration_of(result.duration_ms),
    )
    if result.error is not None:
        response.error.CopyFrom(
            types_pb2.HandlerError(
                type=result.error.type, message=result.error.message, stack=result.error.stack or ""
            )
        )
    if len(result.outcomes) > 1:
        response.batch_outcomes.extend(OUTCOME_OF[o.kind] for o in result.outcomes)
    return response


def ts(moment: datetime) -> timestamp_pb2.Timestamp:
    """Convert a datetime to a Timestamp."""
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(moment)
    return out


_YEAR_ONE = datetime.min.replace(tzinfo=UTC)


def period(
    start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp, default: timedelta
) -> tuple[datetime, datetime]:
    """Resolve a request's time range, with defaults, or raise when it is reversed."""
    stop = request_time("end_time", end) if end.seconds or end.nanos else datetime.now(UTC)
    if start.seconds or start.nanos:
        begin = request_time("start_time", start)
    else:  # the default period, or from the year 1 when that starts before it
        begin = stop - min(default, stop - _YEAR_ONE)
    if begin > stop:
        raise InvalidArgument.field("start_time", "must not be after end_time")
    return begin, stop


def minute_row(row: asyncpg.Record) -> pb.DeliveryMinute:
    """Convert a delivery_minute row (or a sum over rows)."""
    return pb.DeliveryMinute(
        minute=ts(row["minute"]),
        execution_time=duration_of(float(row["execution_ms"] or 0)),
        **{name: int(row[name] or 0) for name in COUNTERS},
    )


class ExecutorServicer(executor_pb2_grpc.ExecutorServicer):
    """Serve delivery records and health; the registry authorizes each call."""

    def __init__(
        self,
        db: asyncpg.Pool,
        gate: RegistryGate,
        js: JetStreamContext,
        pool: RuntimePool,
        pages: PageTokens,
        workspace_of: WorkspaceOf,
        previews: WorkspaceBudget,
        tails: WorkspaceBudget,
    ) -> None:
        self._previews = previews
        self._pages = pages
        self._workspace_of = workspace_of
        self._reads = DeliveryReads(db)
        self._gate = gate
        self._js = js
        self._pool = pool
        self._tail = EventTail(js, gate, tails)

    async def _may_run_code(self, context: Ctx, function: str) -> str:
        """Raise unless the caller administers the function the code is a draft of.

        A preview runs on the production worker pool and sends the function's requests with
        settings of the caller's choosing, so it needs what saving the code would need:
        Functions Admin covering the function (of all functions when none is named, as for
        CreateFunction); Workspace Owners qualify. Returns the caller's workspace name.
        """
        me = await self._gate.whoami(context)  # a member: the service token is refused here
        if function:
            # NOT_FOUND for another workspace's function, exactly as for a missing one.
            await self._gate.function(context, function)
        if not may_write_function(me.member, names.last(function) if function else None):
            what = (
                f"Functions Admin of function {function!r}"
                if function
                else "Functions Admin of all functions (or name the function in `function`)"
            )
            raise PermissionDenied(f"previewing code needs {what}, or Workspace Owner")
        return me.workspace.name

    async def Preview(self, request: pb.PreviewRequest, context: Ctx) -> pb.PreviewResponse:
        """Run code on test events in a fresh isolate and report everything it did."""
        program = request.WhichOneof("program")
        if program == "code":
            code = request.code
            if not code:
                raise InvalidArgument.field("code", "is empty: give the JavaScript to run")
            workspace = await self._may_run_code(context, request.function)
        elif program == "version":
            # NOT_FOUND for another workspace's version, exactly as for a missing one.
            version = await self._gate.version(context, request.version)
            function = request.version.rsplit("/versions/", 1)[0]
            workspace = await self._may_run_code(context, function)
            code = version.code
        else:
            raise InvalidArgument.field("program", "required: give code, or a version to run")
        if not request.event_json:
            raise InvalidArgument.field("event_json", "required: an event or an array of events")
        problem = await asyncio.to_thread(check_syntax, code)
        if problem is not None:
            raise InvalidArgument.field(
                "code",
                f"syntax error at line {problem.line}, column {problem.column}: {problem.message}",
            )
        owner = names.last(workspace)
        self._previews.take(owner)  # authorized and well-formed: it will run
        settings = json_format.MessageToDict(request.settings)
        definitions = request.setting_definitions
        secret_names = {d.name for d in definitions if d.encrypted}
        schema = [
            {"name": d.name, "type": TYPE_NAMES.get(d.type, "string"), "required": d.required}
            for d in definitions
        ]
        try:
            result = await run_preview(
                self._pool,
                code,
                request.event_json.encode(),
                settings,
                secrets=[str(v) for k, v in settings.items() if k in secret_names and v],
                schema=schema or None,
                # One workspace's looping previews are quarantined without any other's.
                workspace=owner,
            )
        except InvalidInvocation as error:  # refused before it ran: nothing spent
            self._previews.give_back(owner)
            raise InvalidArgument.field("event_json", str(error)) from error
        return preview_response(result)

    async def _listed(
        self, context: Ctx, method: str, request, default: timedelta
    ) -> tuple[res.Instance, str, datetime, datetime, int, list | None]:
        """Authorize a list of an instance's records; read its period, size and token."""
        names.parse_instance("parent", request.parent)
        instance = await self._gate.instance(context, request.parent)
        scope = names.workspace_of(instance.name)
        begin, stop = period(request.start_time, request.end_time, default)
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(request.page_size or 60, 500)
        return instance, scope, begin, stop, size, self._pages.read(method, scope, request)

    async def ListDeliveryMinutes(
        self, request: pb.ListDeliveryMinutesRequest, context: Ctx
    ) -> pb.ListDeliveryMinutesResponse:
        """List an instance's per-minute counts, newest first."""
        instance, scope, begin, stop, size, last = await self._listed(
            context, "ListDeliveryMinutes", request, timedelta(hours=1)
        )
        if last is not None:
            try:
                stop = min(stop, datetime.fromisoformat(last[0]))
            except (ValueError, IndexError, TypeError):
                raise InvalidArgument.field("page_token", "is not a token of this list") from None
        rows = await self._reads.minutes(names.last(instance.name), begin, stop, size + 1)
        token = ""
        if len(rows) > size:
            token = self._pages.issue(
                "ListDeliveryMinutes", scope, request, [rows[size - 1]["minute"].isoformat()]
            )
        return pb.ListDeliveryMinutesResponse(
            minutes=[minute_row(r) for r in rows[:size]], next_page_token=token
        )

    async def ListDeliveryFailures(
        self, request: pb.ListDeliveryFailuresRequest, context: Ctx
    ) -> pb.ListDeliveryFailuresResponse:
        """List an instance's sampled failures and discards, newest first."""
        instance, scope, begin, stop, size, last = await self._listed(
            context, "ListDeliveryFailures", request, timedelta(hours=1)
        )
        before: tuple[datetime, int] | None = None
        if last is not None:
            try:
                before = (datetime.fromisoformat(last[0]), int(last[1]))
            except (ValueError, IndexError, TypeError):
                raise InvalidArgument.field("page_token", "is not a token of this list") from None
        rows = await self._reads.failures(names.last(instance.name), begin, stop, size + 1, before)
        function_id = names.last(instance.function)
        failures = [
            pb.DeliveryFailure(
                time=ts(r["time"]),
                message_id=r["message_id"],
                event_json=r["event"],
                outcome=OUTCOME_OF.get(r["outcome"], types_pb2.OUTCOME_UNSPECIFIED),
                error=types_pb2.HandlerError(
                    type=r["error_type"], message=r["error_message"], stack=r["error_stack"]
                ),
                logs=r["logs"],
                requests=[
                    types_pb2.RequestTrace(
                        method=t.get("method") or "",
                        url=t.get("url") or "",
                        status=t.get("status") or 0,
                        error=t.get("error") or "",
                        duration=duration_of(t.get("duration_ms") or 0.0),
                    )
                    for t in orjson.loads(r["requests"])
                    if isinstance(t, dict)
                ],
                version=names.version(scope, function_id, r["version_id"]),
                trace_id=r["trace_id"],
                invocation_events=r["invocation_events"],
            )
            for r in rows[:size]
        ]
        token = ""
        if len(rows) > size:
            end = rows[size - 1]
            token = self._pages.issue(
                "ListDeliveryFailures", scope, request, [end["time"].isoformat(), end["id"]]
            )
        return pb.ListDeliveryFailuresResponse(failures=failures, next_page_token=token)

    async def _pending(self, stream: str, subject: str) -> int:
        with contextlib.suppress(*NATS_ERRORS):  # NATS away: no backlog figure to show
            info = await self._js.stream_info(stream, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        return 0

    async def GetTrace(self, request: pb.GetTraceRequest, context: Ctx) -> pb.GetTraceResponse:
        """Return an event's recent journey from the trace store (see traces.py)."""
        return await get_trace(self._js, self._gate, self._workspace_of, request, context)

    async def TailEvents(
        self, request: pb.TailEventsRequest, context: Ctx
    ) -> AsyncIterator[pb.TailEventsResponse]:
        """Stream the packs stored for the caller's instances (see tail.py)."""
        async for pack in self._tail.tail(request, context):
            yield pack

    async def GetDeliveryStats(
        self, request: pb.GetDeliveryStatsRequest, context: Ctx
    ) -> pb.GetDeliveryStatsResponse:
        """Sum an instance's deliveries over a period, with its health."""
        ws, instance_id = names.parse_delivery_stats("name", request.name)
        await self._gate.instance(context, names.INSTANCE.name(ws, instance_id))
        begin, stop = period(request.start_time, request.end_time, timedelta(hours=24))
        total = await self._reads.totals(instance_id, begin, stop)
        outcomes = ("delivered", "retried", "discarded", "failed")
        recent = await self._reads.totals(
            instance_id, datetime.now(UTC) - HEALTH_WINDOW, datetime.now(UTC)
        )
        return pb.GetDeliveryStatsResponse(
            totals=minute_row(total),  # type: ignore[arg-type]
            health=health(**{n: int(recent[n]) for n in outcomes}),
            pending_retries=await self._pending(
                streams.RETRY_STREAM, streams.retry_subject(ws, instance_id)
            ),
            dead_letters=await self._pending(
                streams.DEAD_STREAM, streams.dead_subject(ws, instance_id)
            ),
        )
