"""Tracing and metrics for every gRPC server and client of the platform.

Server calls continue the caller's W3C trace from gRPC metadata (in the shape of
OpenTelemetry's gRPC instrumentation, `ServerCalls`) and unary ones are timed into
`rpc.server.duration`; calls the services make to each other carry their trace with the
instrumentation's client interceptors.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.metrics import Meter
from opentelemetry.semconv._incubating.attributes.net_attributes import (
    NET_PEER_IP,
    NET_PEER_NAME,
    NET_PEER_PORT,
)
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.telemetry import extract
from services.common.tracer import get_tracer

tracer = get_tracer("eventfn.rpc")
# Characters of a caller's user agent its call's span keeps.
MAX_USER_AGENT_CHARS = 256


# Codes that mark a server span as failed (OpenTelemetry's gRPC conventions): the others are
# the caller's mistakes, not the server's.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ServerCalls:
    """Trace and time the calls a server serves, as OpenTelemetry's gRPC instrumentation
    does, at a fraction of its cost per call (no context proxy, nothing rebuilt per call).

    A call gets a SERVER span named by its method, continuing the caller's W3C trace from its
    metadata, with the `rpc.*` and `net.peer.*` attributes of the semantic conventions; a
    unary call is timed into `rpc.server.duration` by method and status code.
    """

    def __init__(self, meter: Meter | None) -> None:
        self._duration = (
            meter.create_histogram(
                "rpc.server.duration", unit="s", description="Duration of gRPC calls served"
            )
            if meter is not None
            else None
        )
        self._methods: dict[str, dict[str, Any]] = {}
        self._labels: dict[tuple[str, grpc.StatusCode], dict[str, str]] = {}

    def span(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        """Return the `with` block of a call's SERVER span (current inside it)."""
        traceparent = tracestate = agent = None
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
            elif key == "user-agent":
                agent = value
        attributes = {**self._method_attributes(method), RPC_GRPC_STATUS_CODE: 0}
        if agent is not None:  # the caller's to choose: kept short
            attributes["rpc.user_agent"] = agent[:MAX_USER_AGENT_CHARS]
        _peer_attributes(context.peer(), attributes)
        parent = None
        if isinstance(traceparent, str):
            carrier = {"traceparent": traceparent}
            if isinstance(tracestate, str):
                carrier["tracestate"] = tracestate
            parent = extract(carrier)
        return tracer.start_as_current_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def ended(self, span: Span, code: grpc.StatusCode, details: str | None) -> None:
        """Give a call's span its status code (and an error status for a server fault)."""
        if code is grpc.StatusCode.OK or not span.is_recording():
            return
        span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
        if code in _SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, f"{code}:{details or ''}"))

    def timed(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Record a unary call's duration under its method and status code."""
        if self._duration is None:
            return
        labels = self._labels.get((method, code))
        if labels is None:
            labels = self._labels[method, code] = {
                "rpc.method": method,
                "rpc.grpc.status_code": code.name,
            }
        self._duration.record(seconds, labels)

    def _method_attributes(self, method: str) -> dict[str, Any]:
        found = self._methods.get(method)
        if found is None:
            service, _, name = method.lstrip("/").partition("/")
            found = self._methods[method] = {
                RPC_SYSTEM: "grpc",
                RPC_SERVICE: service,
                RPC_METHOD: name,
            }
        return found


def _peer_attributes(peer: str, attributes: dict[str, Any]) -> None:
    """Add `net.peer.ip`/`port` from a gRPC peer (`ipv4:10.2.1.1:57284`, `ipv6:[::1]:57284`,
    the first of a comma-separated list); none for a unix socket or an unreadable peer."""
    first = peer.partition(",")[0]
    kind, _, address = first.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return
    ip, _, port = address.rpartition(":")
    if not ip or not port:
        return
    ip = unquote(ip)
    attributes[NET_PEER_IP] = ip
    attributes[NET_PEER_PORT] = port
    if ip in ("[::1]", "127.0.0.1"):
        attributes[NET_PEER_NAME] = "localhost"


HEALTH_SERVICE = "/grpc.health.v1.Health"


def traced(details: grpc.HandlerCallDetails) -> bool:
    """Tell whether a call gets a server span: all but health checks and the config stream.

    The config stream lives as long as its watcher (a span of hours says nothing, and the
    instrumentation cannot end it cleanly when the watcher goes away: its generator is closed
    from another context). The instrumentation's own filters do the same with several calls
    and a typing-Protocol isinstance check per call (≈ 5 % of a 100-event Ingest call).
    """
    service, _, method = details.method.rpartition("/")
    return service != HEALTH_SERVICE and method != "WatchConfig"


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Return the interceptors that carry the current trace on calls to other services."""
    return list(aio_client_interceptors())
