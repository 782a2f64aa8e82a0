"""gRPC plumbing shared by every service: the server with health and reflection, the
interceptor every call passes (request text checks, the error mapping), the limits on what
clients sending nothing hold (`call_limits`), bearer-token extraction."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio  # pyright: ignore[reportAttributeAccessIssue]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.metrics import Meter

from services.common.call_limits import (
    ServerLimits,
    WaitingCall,
    WaitingCalls,
    ended_by_limits,
    read_request,
)
from services.common.errors import (
    EventfnError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
)
from services.common.request_text import check_request_text_aside
from services.common.rpc_observe import ServerCalls, traced

log = logging.getLogger(__name__)

DOMAIN = "eventfn.dev"


def to_status(error: EventfnError) -> grpc.Status:
    """Map a domain error to a rich `google.rpc.Status` (ErrorInfo, BadRequest, RetryInfo)."""
    return rpc_status.to_status(status_message(error))


def status_message(error: EventfnError) -> status_pb2.Status:
    """Describe a domain error as the `google.rpc.Status` message a call would end with."""
    info = any_pb2.Any()
    metadata = dict(error.metadata)
    if isinstance(error, Internal):
        metadata["correlation_id"] = error.correlation_id
    info.Pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    details = [info]
    violations = getattr(error, "violations", ())
    if isinstance(error, InvalidArgument) or violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    return status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=details
    )


def unexpected(method: str, error: Exception) -> Internal:
    """Log an unexpected exception with its traceback under a new correlation id."""
    correlation_id = uuid.uuid4().hex
    log.error(
        "internal error %s in %s: %s", correlation_id, method, type(error).__name__, exc_info=error
    )
    return Internal(correlation_id)


async def _checked(requests: AsyncIterator[Any], call: WaitingCall | None) -> AsyncIterator[Any]:
    """Pass a request stream on, refusing a message with control characters when it comes."""
    async for request in requests:
        if call is not None:
            call.came(more=True)
        await check_request_text_aside(request)
        yield request


class ServerGate(grpc.aio.ServerInterceptor):
    """The one gate every RPC passes: its span and timing, request text checks, and errors
    turned into statuses.

    Each call is traced and (unary ones) timed by `ServerCalls`. Each request (each message of
    a request stream) is refused with INVALID_ARGUMENT when a string in it holds a control
    character; an `EventfnError` raised by a servicer becomes its status with details; any
    other exception becomes INTERNAL with a correlation id, logged with its traceback, and its
    text never reaches the caller. A method's wrapped handler is built once, on its first call.
    Given `waiting`, each call counts as waiting for the client's message as `WaitingCalls`
    says, and one it ends gets its status here.
    """

    def __init__(self, calls: ServerCalls, waiting: WaitingCalls | None = None) -> None:
        self._calls = calls
        self._waiting = waiting
        # Per method: the handler it was built for, and the gate around it.
        self._handlers: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Return the method's handler wrapped in the gate (built on the method's first call)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        built = self._handlers.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        wrapped = self._wrap(method, handler, traced(handler_call_details))
        self._handlers[method] = (handler, wrapped)
        return wrapped

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler, with_span: bool
    ) -> grpc.RpcMethodHandler:
        unary = _Unary(self._calls, method, with_span, self._waiting)
        stream = _Stream(self._calls, method, with_span, self._waiting)
        wrap = {
            "unary_unary": (unary.wrap, False, grpc.unary_unary_rpc_method_handler),
            "stream_unary": (unary.wrap, True, grpc.stream_unary_rpc_method_handler),
            "unary_stream": (stream.wrap, False, grpc.unary_stream_rpc_method_handler),
            "stream_stream": (stream.wrap, True, grpc.stream_stream_rpc_method_handler),
        }
        for kind, (gate, streamed, build) in wrap.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                if self._waiting is not None:
                    # grpc reads a unary request before any handler runs, unbounded: given
                    # limits, the gate is a request-stream handler and reads it itself.
                    build = _READING_REQUEST.get(kind, build)
                return build(
                    gate(behavior, streamed),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


class _Call:
    """What a gated call of one method shares: its span, its ending, its error mapping."""

    def __init__(
        self, calls: ServerCalls, method: str, with_span: bool, waiting: WaitingCalls | None
    ) -> None:
        self._calls = calls
        self._method = method
        self._with_span = with_span
        self._waiting = waiting

    def _begin(self) -> WaitingCall | None:
        return None if self._waiting is None else self._waiting.begin()

    async def _request(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        call: WaitingCall | None,
        streamed: bool,
        still_waits: bool = False,
    ) -> Any:
        """Return what the behavior gets: the checked request, or the checked request stream."""
        if streamed:  # each message of the stream is checked as it comes
            return _checked(request, call)
        if call is not None:  # grpc passed the (unread) request stream
            request = await read_request(context, call, still_waits=still_waits)
        await check_request_text_aside(request)
        return request

    def _span(self, context: grpc.aio.ServicerContext) -> Any:
        return self._calls.span(self._method, context) if self._with_span else _NO_SPAN

    def _mapped(self, error: Exception, span: Any) -> EventfnError:
        """Return the domain error a body raised, or INTERNAL for a bug (logged with its
        traceback and recorded on the span, never shown to the caller)."""
        if isinstance(error, EventfnError):
            return error
        if span is not None:
            span.record_exception(error)
        return unexpected(self._method, error)

    async def _abort(
        self, status: EventfnError, span: Any, context: grpc.aio.ServicerContext
    ) -> NoReturn:
        """End the call with the error's status (and its span with the code)."""
        self._ended(span, status.code, status.message)
        await context.abort_with_status(to_status(status))  # type: ignore[attr-defined]
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    def _ended(self, span: Any, code: grpc.StatusCode, details: str | None) -> None:
        if span is not None:
            self._calls.ended(span, code, details)


def _code_of(context: grpc.aio.ServicerContext, error: BaseException) -> grpc.StatusCode:
    """Name how a call ended that was aborted or cancelled rather than answered."""
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = context.code()
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class _Unary(_Call):
    def wrap(self, behavior: Callable[..., Awaitable[Any]], streamed: bool) -> Callable[..., Any]:
        calls, method = self._calls, self._method

        async def gate(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            call = self._begin()

            def timed(code: grpc.StatusCode) -> None:
                # Before the status goes out: whoever saw the call end finds it measured.
                calls.timed(method, code, time.perf_counter() - started)

            with self._span(context) as span:
                try:
                    checked = await self._request(request, context, call, streamed)
                    answer = await behavior(checked, context)
                except (grpc.aio.AbortError, asyncio.CancelledError) as error:
                    if (limited := ended_by_limits(call, error)) is None:
                        code = _code_of(context, error)
                        self._ended(span, code, context.details())
                        timed(code)
                        raise
                    timed(limited.code)
                    await self._abort(limited, span, context)
                except Exception as error:
                    status = self._mapped(error, span)
                    timed(status.code)
                    await self._abort(status, span, context)
                timed(grpc.StatusCode.OK)
                return answer

        return gate


class _Stream(_Call):
    def wrap(self, behavior: Callable[..., Any], streamed: bool) -> Callable[..., Any]:
        # A handler is an async generator of responses, or (grpc_health's Watch) a coroutine
        # writing them itself.
        writes_itself = not inspect.isasyncgenfunction(behavior)

        async def gate(request: Any, context: grpc.aio.ServicerContext) -> None:
            call = self._begin()
            writing = False
            with self._span(context) as span:
                try:
                    checked = await self._request(request, context, call, streamed, writes_itself)
                    if writes_itself:  # its writes are small and rare: it waits for news
                        await behavior(checked, context)
                        return
                    async with contextlib.aclosing(behavior(checked, context)) as items:
                        async for item in items:
                            writing = True
                            await context.write(item)
                            writing = False
                except (grpc.aio.AbortError, asyncio.CancelledError) as error:
                    # A call ended while a write waits for its client to read can send no
                    # status after it: it is cancelled (the servicer stopped all the same).
                    if writing or (limited := ended_by_limits(call, error)) is None:
                        self._ended(span, _code_of(context, error), context.details())
                        raise
                    await self._abort(limited, span, context)
                except Exception as error:
                    await self._abort(self._mapped(error, span), span, context)

        return gate


# A unary-request method's handler as a request-stream one, whose gate reads the request.
_READING_REQUEST = {
    "unary_unary": grpc.stream_unary_rpc_method_handler,
    "unary_stream": grpc.stream_stream_rpc_method_handler,
}

# The `with` block of a call that gets no span (health checks, the config stream).
_NO_SPAN = contextlib.nullcontext()


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """Return the bearer token of the call's `authorization` metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def split_address(address: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port`; raise ValueError when it is not that."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


def address_taken(address: str) -> str | None:
    """Return why some address `host:port` resolves to cannot be listened on, or None.

    Probes like a server binds: SO_REUSEADDR (a port in TIME_WAIT is free), never
    SO_REUSEPORT. Every resolved address counts: `localhost` free on ::1 but taken on
    127.0.0.1 is taken. Port 0 is always free.
    """
    try:
        host, port = split_address(address)
    except ValueError as error:
        return str(error)
    if port == 0:
        return None
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        return f"cannot resolve {host!r}: {error.strerror}"
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as error:
                return error.strerror or str(error)
    return None


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def serve_reflection(server: grpc.aio.Server, names: list[str]) -> None:
    """Serve gRPC reflection as grpc.reflection.v1 and the older v1alpha.

    grpcio-reflection implements only v1alpha; v1's messages are the same on the wire (the
    protos differ in their package name only), so one servicer answers both method paths.
    """
    servicer = reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME, REFLECTION_V1])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REFLECTION_V1,
                {
                    "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                        servicer.ServerReflectionInfo,
                        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
                    )
                },
            ),
        )
    )


# What a client of the platform's own services may receive: an instance's configuration or
# a function version carries its code (up to 5 MB), over gRPC's default of 4 MiB.
CLIENT_OPTIONS = (("grpc.max_receive_message_length", 16 * 1024 * 1024),)


def create_server(
    *,
    address: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    meter: Meter | None = None,
    limits: ServerLimits = ServerLimits(),
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """Build a grpc.aio server with the servicers, health checking and reflection.

    Every call is traced (continuing the caller's trace) and, given a meter, timed; `limits`
    bounds what clients sending nothing hold (see `ServerLimits`).
    """
    waiting = None
    if limits.call_idle_seconds is not None:
        waiting = WaitingCalls(limits.call_idle_seconds, limits.max_waiting_calls)
    server = grpc.aio.server(
        interceptors=[ServerGate(ServerCalls(meter), waiting), *interceptors],
        options=[
            *limits.options(),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # gRPC sets SO_REUSEPORT by default: a second server on a taken port would share
            # it silently (two platforms answering one address). A taken port is an error.
            ("grpc.so_reuseport", 0),
        ],
    )
    for add in register:
        add(server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    serve_reflection(server, [*names, health.SERVICE_NAME])
    why = address_taken(address)
    port = 0
    if why is None:
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises this for a port it cannot bind
            why = "the port is taken or the address is invalid"
    if port == 0:
        raise OSError(
            f"cannot listen on {address} for gRPC ({why}): is another eventfn running? "
            "Choose a free address (EVENTFN_<SERVICE>_LISTEN)"
        )
    return server, port, health_servicer


async def set_serving(health_servicer: health_aio.HealthServicer, names: Iterable[str]) -> None:
    """Mark the overall server and each named service as SERVING."""
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def wait_for_termination_signal() -> None:
    """Wait until SIGTERM or SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
