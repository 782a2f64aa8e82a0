"""Logging and tracing set-up shared by every service (metrics: `services.common.metrics`).

Tracing follows the standard `OTEL_*` variables: `OTEL_SERVICE_NAME` and
`OTEL_RESOURCE_ATTRIBUTES` for the resource, `OTEL_TRACES_SAMPLER` /
`OTEL_TRACES_SAMPLER_ARG` for sampling (default: parent-based, always on), and
`OTEL_EXPORTER_OTLP_ENDPOINT` to export spans to a collector. The provider is the lean one of
`services.common.tracer` (the SDK's costs several times as much per span). With no exporter
configured no tracer provider is installed, so spans cost next to nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.printable import printable
from services.common.tracer import TracerProvider

# The W3C trace context (traceparent/tracestate) every service reads and writes.
PROPAGATOR = TraceContextTextMapPropagator()
# A traceparent as this platform writes it: version 00, no further fields.
_CANONICAL = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")
_REMOTE_FLAGS = (TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.SAMPLED))

# Spans name at most this many messageIds of the events they carry, in this attribute.
MAX_MESSAGE_IDS = 16
MESSAGE_IDS_ATTRIBUTE = "eventfn.message_ids"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current span's trace_id and span_id."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as a JSON line."""
        doc: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            doc["trace_id"] = format(context.trace_id, "032x")
            doc["span_id"] = format(context.span_id, "016x")
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


class TextFormatter(logging.Formatter):
    """One line of text per record. A message may carry others' text (a function's error, an
    event's field): its control characters, line breaks included, are shown escaped, so it
    can neither forge log lines nor act on the terminal that reads them. Tracebacks keep
    their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        """Render the record's line with its message made printable."""
        record.message = printable(record.message)
        return super().formatMessage(record)


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr: one line of text per record, or one JSON object (`fmt="json"`)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def setup_tracing(service_name: str, extra: Iterable[SpanExporter] = ()) -> TracerProvider | None:
    """Install a tracer provider exporting to OTLP (when configured) and to `extra` exporters.

    Returns None, installing nothing, when there is nowhere to send spans.
    """
    exporters = list(extra)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if not exporters:
        return None
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the sampler
    # defaults to OTEL_TRACES_SAMPLER(_ARG) when none is given.
    resource = Resource.create({"service.name": service_name}).merge(
        Resource.create({"service.name": os.environ["OTEL_SERVICE_NAME"]})
        if os.environ.get("OTEL_SERVICE_NAME")
        else Resource.get_empty()
    )
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        processor: SpanProcessor = BatchSpanProcessor(exporter)
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    return provider


def message_ids(ids: Iterable[str]) -> list[str]:
    """Return at most MAX_MESSAGE_IDS messageIds, for a span attribute."""
    out: list[str] = []
    for message_id in ids:
        if len(out) == MAX_MESSAGE_IDS:
            break
        out.append(message_id)
    return out


def extract(carrier: Mapping[str, str]) -> Context:
    """Return the context a carrier's W3C trace headers name, as `PROPAGATOR.extract` does.

    A traceparent in the form the platform writes (version 00, flags 00 or 01, no
    tracestate) is read without the propagator's general parse, which costs several times
    as much, once per pack; anything else goes to the propagator.
    """
    traceparent = carrier.get("traceparent")
    match = (
        _CANONICAL.fullmatch(traceparent)
        if isinstance(traceparent, str) and not carrier.get("tracestate")
        else None
    )
    if match is None:
        return PROPAGATOR.extract(carrier)
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if not trace_id or not span_id:
        return PROPAGATOR.extract(carrier)
    span = NonRecordingSpan(
        SpanContext(trace_id, span_id, is_remote=True, trace_flags=_REMOTE_FLAGS[match[3] == "01"])
    )
    return trace.set_span_in_context(span)
