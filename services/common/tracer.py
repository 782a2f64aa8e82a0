"""A lean OpenTelemetry tracer provider: the API's tracers and spans at a fraction of the SDK's
cost per span, feeding the SDK's span processors and exporters unchanged.

A single event makes about four spans (ingest, route, invoke, its fetch); with the SDK's
`TracerProvider` they cost ≈ 15 % of the platform's CPU per event (bench/latency): a span
there takes a lock and validates each attribute on the way in, copies itself into a new
`ReadableSpan` when it ends, and `start_as_current_span` is a generator-based context
manager around another. Here a span is the `ReadableSpan` its processors receive (it stops
changing once ended), its attributes a plain dict, and the current-span context manager a
small class. Sampling follows `OTEL_TRACES_SAMPLER(_ARG)` as the SDK's does (the default,
parent-based always-on, without a call per span); processors are SDK `SpanProcessor`s
(`BatchSpanProcessor`: `OTEL_BSP_*`), given each span when it ends (`on_end`; the SDK's
batch and simple processors do nothing at `on_start`, which is not called), and shut down,
flushing their queues, at exit.
"""

from __future__ import annotations

import atexit
import os
import random
import threading
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from types import TracebackType
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, sampling
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

# Trace and span ids come from a generator of their own, as random as the global one (and
# reseeded in a forked child as it is): whoever seeds or draws from the global `random` (a
# library, a test framework seeding it for each example) neither repeats nor disturbs them.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)
random_bits = _IDS.getrandbits

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)


class Span(trace_api.Span, ReadableSpan):
    """A recording span; once ended it is the read-only record its processors were given."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link] | None,
        start_time: int | None,
        provider: TracerProvider,
        scope: InstrumentationScope,
    ) -> None:
        # ReadableSpan's fields, set directly: its constructor's defaults cost more than these.
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = (
            {k: v for k, v in attributes.items() if v is not None} if attributes else {}
        )
        self._events: list[Event] = []
        self._links = list(links) if links else []
        self._start_time = start_time or time_ns()
        self._end_time: int | None = None
        self._status = _UNSET
        self._resource = provider.resource
        self._instrumentation_scope = scope
        self._instrumentation_info = None
        self._provider = provider

    def get_span_context(self) -> SpanContext:
        """Return the span's context."""
        return self._context

    def is_recording(self) -> bool:
        """Tell whether the span still takes changes (it has not ended)."""
        return self._end_time is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        """Set an attribute (None values are left out, as the SDK does)."""
        if self._end_time is None and value is not None:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        """Set several attributes."""
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        """Add an event."""
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        """Link another span's context."""
        if self._end_time is None and context.is_valid:
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        """Rename the span."""
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """Set the status; OK, once set, is final (the SDK's rule)."""
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        self._status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        """Add an `exception` event in the semantic conventions' shape."""
        recorded: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        """End the span and hand it to the processors (a second end is ignored)."""
        if self._end_time is not None:
            return
        self._end_time = end_time or time_ns()
        for processor in self._provider.processors:
            processor.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """End the span, recording an exception that ends its block."""
        if isinstance(exc_val, Exception):  # not CancelledError, GeneratorExit (as the SDK)
            _record_failure(self, exc_val, record=True, set_status=True)
        self.end()


def _present(attributes: types.Attributes) -> dict[str, types.AttributeValue]:
    """Return the attributes that have a value (the SDK leaves None out too)."""
    if not attributes:
        return {}
    return {k: v for k, v in attributes.items() if v is not None}


def _record_failure(
    span: trace_api.Span, exc: BaseException, *, record: bool, set_status: bool
) -> None:
    if not span.is_recording():
        return
    if record:
        span.record_exception(exc, escaped=True)
    if set_status:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class _Current:
    """`with tracer.start_as_current_span(...) as span`: the span is current inside."""

    __slots__ = ("_end", "_record", "_set_status", "_span", "_token")

    def __init__(self, span: trace_api.Span, record: bool, set_status: bool, end: bool) -> None:
        self._span = span
        self._record = record
        self._set_status = set_status
        self._end = end

    def __enter__(self) -> trace_api.Span:
        self._token = context_api.attach(trace_api.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        try:
            if isinstance(exc_val, Exception):  # not CancelledError, GeneratorExit (as the SDK)
                _record_failure(
                    self._span, exc_val, record=self._record, set_status=self._set_status
                )
            if self._end:
                self._span.end()
        finally:
            context_api.detach(self._token)


class Tracer(trace_api.Tracer):
    """Make spans for one instrumentation scope."""

    def __init__(self, provider: TracerProvider, scope: InstrumentationScope) -> None:
        self._provider = provider
        self._scope = scope
        self._sampler = provider.sampler
        self._default_sampler = provider.sampler is sampling.DEFAULT_ON
        self._bits = random_bits

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        """Start a span, a child of the current span or of `context`'s."""
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        assert parent is not None
        if parent.is_valid:
            trace_id = parent.trace_id
            trace_state = parent.trace_state
        else:
            parent = None
            trace_id = self._bits(128) or 1
            trace_state = None
        if self._default_sampler:  # parent-based, always on: follow the parent's flag
            sampled = parent is None or parent.trace_flags.sampled
        else:
            result = self._sampler.should_sample(
                context, trace_id, name, kind, attributes, links, trace_state
            )
            sampled = result.decision.is_sampled()
            trace_state = result.trace_state
            if result.attributes:
                attributes = {**(attributes or {}), **result.attributes}
        span_context = SpanContext(
            trace_id,
            self._bits(64) or 1,
            is_remote=False,
            trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
            trace_state=trace_state,
        )
        if not sampled:
            return trace_api.NonRecordingSpan(span_context)
        return Span(
            name,
            span_context,
            parent,
            kind,
            attributes,
            links,
            start_time,
            self._provider,
            self._scope,
        )

    def start_as_current_span(  # type: ignore[override]  # a context manager, not a generator
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _Current:
        """Start a span that is the current one inside a `with` block."""
        span = self.start_span(name, context, kind, attributes, links, start_time)
        return _Current(span, record_exception, set_status_on_exception, end_on_exit)


class TracerProvider(trace_api.TracerProvider):
    """Tracers whose spans go to SDK span processors; shut down at exit."""

    def __init__(self, resource: Resource | None = None, sampler: sampling.Sampler | None = None):
        self.resource = resource or Resource.create({})
        # The SDK's own default, read as its TracerProvider reads it (OTEL_TRACES_SAMPLER).
        self.sampler = sampler or sampling._get_from_env_or_default()
        self.processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()
        self._shut = False
        atexit.register(self.shutdown)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> Tracer:
        """Return a tracer for an instrumentation scope."""
        return Tracer(
            self,
            InstrumentationScope(
                instrumenting_module_name or "",
                instrumenting_library_version,
                schema_url,
                attributes,
            ),
        )

    def add_span_processor(self, processor: SpanProcessor) -> None:
        """Send every span that ends from now on to `processor` too."""
        with self._lock:
            self.processors = (*self.processors, processor)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export what the processors hold; False if one did not finish in time."""
        return all(p.force_flush(timeout_millis) for p in self.processors)

    def shutdown(self) -> None:
        """Flush and stop every processor (once)."""
        with self._lock:
            if self._shut:
                return
            self._shut = True
        for processor in self.processors:
            processor.shutdown()


class _ModuleTracer(trace_api.Tracer):
    """A module's tracer, made at import: the installed provider's own once there is one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tracer: trace_api.Tracer | None = None

    def _real(self) -> trace_api.Tracer | None:
        tracer = self._tracer
        if tracer is None:
            # Until a provider is installed the API's getter looks the environment up on
            # every call (≈ 1 µs a span); its global is read directly while it is unset and
            # no provider is named by the environment (which the getter would load).
            if trace_api._TRACER_PROVIDER is None and not _PROVIDER_FROM_ENVIRONMENT:
                return None
            provider = trace_api.get_tracer_provider()
            if isinstance(provider, trace_api.ProxyTracerProvider):
                return None  # none installed yet: asked again next time
            tracer = self._tracer = provider.get_tracer(self._name)
        return tracer

    def start_span(self, *args: Any, **kwargs: Any) -> trace_api.Span:
        """Start a span (see `Tracer.start_span`)."""
        return (self._real() or _NO_OP).start_span(*args, **kwargs)

    def start_as_current_span(  # type: ignore[override]  # a context manager, not a generator
        self, name: str, context: context_api.Context | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        """Start a span that is current inside a `with` block (see `Tracer`). With no provider
        it is the API's no-op span, the parent's context (so it still propagates), made
        current without the API's generator."""
        tracer = self._real()
        if tracer is not None:
            return tracer.start_as_current_span(name, context, *args, **kwargs)
        span = _NO_OP.start_span(name, context)  # the no-op tracer reads only the context
        return _Current(span, record=False, set_status=False, end=False)


_NO_OP = trace_api.NoOpTracer()
_PROVIDER_FROM_ENVIRONMENT = OTEL_PYTHON_TRACER_PROVIDER in os.environ


def get_tracer(name: str) -> trace_api.Tracer:
    """Return a module's tracer. Unlike the API's, whose proxy (handed out before a provider is
    installed) wraps every `with` block in a generator of its own, it hands each call to the
    installed provider's tracer directly."""
    return _ModuleTracer(name)
