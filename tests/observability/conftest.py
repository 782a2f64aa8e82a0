"""The whole data path (registry, router, executor, retrier) and a real OTLP/gRPC receiver."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from services.common.trace_store import TraceStoreExporter
from services.common.tracer import TracerProvider
from tests.pipeline.conftest import Platform, platform, sink
from tests.registry.conftest import registry
from tests.retrier.conftest import start_retrier_on

__all__ = ["Platform", "platform", "registry", "sink", "start_retrier_on"]


@dataclass
class Receiver(tgrpc.TraceServiceServicer):
    """An OTLP trace receiver on 127.0.0.1 that keeps every span it is sent.

    It answers from threads of its own, whatever the tests' event loop is doing: on that loop,
    an export sent while a test ran without it (a synchronous one) waited, failed and was
    retried after a jitter drawn from the global `random` in the exporter's thread, which
    moved it under hypothesis's examples in other tests (a HypothesisDeprecationWarning).
    """

    port: int = 0
    spans: list[trace_pb2.Span] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _waiting: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)

    def Export(
        self, request: tpb.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> tpb.ExportTraceServiceResponse:
        """Keep the spans of an export; wake whoever waits for spans."""
        with self._lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            waiting = list(self._waiting)
        for loop, event in waiting:
            loop.call_soon_threadsafe(event.set)
        return tpb.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[trace_pb2.Span]:
        """Return the spans of one trace (hex id)."""
        with self._lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]

    async def wait_for(self, done: Callable[[], bool], seconds: float) -> None:
        """Wait until `done()` holds, checked after each export (TimeoutError after
        `seconds`)."""
        event = asyncio.Event()
        mine = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiting.append(mine)
        try:
            async with asyncio.timeout(seconds):
                while not done():
                    await event.wait()
                    event.clear()
        finally:
            with self._lock:
                self._waiting.remove(mine)


@pytest.fixture(scope="session")
def receiver() -> Iterator[Receiver]:
    """Run the receiver for the session."""
    rec = Receiver()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    tgrpc.add_TraceServiceServicer_to_server(rec, server)
    rec.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield rec
    server.stop(None)


@pytest.fixture(scope="session")
def exported(receiver: Receiver, nats_url: str) -> Iterator[TracerProvider]:
    """Send this process's spans to the receiver and the trace store (the tracer provider is
    process-wide, so its exporters are added once: twice, each span would arrive twice)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True)
    processors = [
        BatchSpanProcessor(exporter, schedule_delay_millis=100),
        BatchSpanProcessor(TraceStoreExporter(nats_url), schedule_delay_millis=100),
    ]
    for processor in processors:
        provider.add_span_processor(processor)
    yield provider
    for processor in processors:  # while the receiver and NATS still run (not at exit)
        processor.shutdown()
