"""The whole data path (registry, router, executor, retrier) and a real OTLP/gRPC receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio
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
    """An OTLP trace receiver on 127.0.0.1 that keeps every span it is sent."""

    port: int = 0
    spans: list[trace_pb2.Span] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def Export(
        self, request: tpb.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ExportTraceServiceResponse:
        """Keep the spans of an export."""
        async with self.changed:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
            self.changed.notify_all()
        return tpb.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[trace_pb2.Span]:
        """Return the spans of one trace (hex id)."""
        return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest_asyncio.fixture(scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    """Run the receiver for the session."""
    rec = Receiver()
    server = grpc.aio.server()
    tgrpc.add_TraceServiceServicer_to_server(rec, server)
    rec.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield rec
    await server.stop(None)


@pytest.fixture(scope="session")
def exported(receiver: Receiver, nats_url: str) -> Iterator[TracerProvider]:
    """Send this process's spans to the receiver and the trace store (the tracer provider is
    process-wide, so its exporters are added once: twice, each span would arrive twice)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver.port}", insecure=True)
    # A background thread exports: the receiver answers on this test's event loop.
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    store = BatchSpanProcessor(TraceStoreExporter(nats_url), schedule_delay_millis=100)
    provider.add_span_processor(store)
    yield provider
