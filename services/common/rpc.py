"""gRPC plumbing shared by every service: the server with health and reflection, the
interceptor every call passes (request text checks, the error mapping), bearer-token
extraction."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio  # pyright: ignore[reportAttributeAccessIssue]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from opentelemetry.metrics import Meter

from services.common.errors import EventfnError, Internal, InvalidArgument
from services.common.request_text import check_request_text
from services.common.rpc_observe import server_interceptors

log = logging.getLogger(__name__)

DOMAIN = "eventfn.dev"


def to_status(error: EventfnError) -> grpc.Status:
    """Map a domain error to a rich `google.rpc.Status` (ErrorInfo, BadRequest details)."""
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


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Pass a request stream on, refusing a message with control characters when it comes."""
    async for request in requests:
        check_request_text(request)
        yield request


def _checked_request(request: Any, *, streamed: bool) -> Any:
    """Check a request (now, or each message of a stream as it comes); return what to pass on."""
    if streamed:
        return _checked(request)
    check_request_text(request)
    return request


@contextlib.asynccontextmanager
async def _answering(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Turn what the body raises into the call's status: mapped, or INTERNAL and logged."""
    try:
        yield
    except EventfnError as error:
        await context.abort_with_status(to_status(error))  # type: ignore[attr-defined]
    except grpc.aio.AbortError:
        raise
    except Exception as error:  # a bug: logged with its traceback, never shown to the caller
        await context.abort_with_status(to_status(unexpected(method, error)))  # type: ignore[attr-defined]


def _wrap_unary(
    method: str, behavior: Callable[..., Awaitable[Any]], *, streamed: bool
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _answering(method, context):
            return await behavior(_checked_request(request, streamed=streamed), context)

    return wrapper


def _wrap_stream(
    method: str, behavior: Callable[..., Any], *, streamed: bool
) -> Callable[..., Any]:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _answering(method, context):
            async for item in behavior(_checked_request(request, streamed=streamed), context):
                yield item

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """The one gate every RPC passes: request text checks, and errors turned into statuses.

    Each request (each message of a request stream) is refused with INVALID_ARGUMENT when a
    string in it holds a control character; an `EventfnError` raised by a servicer becomes its
    status with details; any other exception becomes INTERNAL with a correlation id, logged
    with its traceback, and its text never reaches the caller.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap the handler's behavior so every request is checked and every error mapped."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary, streamed=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream, streamed=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary, streamed=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_stream(method, handler.stream_stream, streamed=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


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


def create_server(
    *,
    address: str,
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    meter: Meter | None = None,
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """Build a grpc.aio server with the servicers, health checking and reflection.

    Every call is traced (continuing the caller's trace) and, given a meter, timed.
    """
    server = grpc.aio.server(
        interceptors=[*server_interceptors(meter), ErrorInterceptor(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
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
