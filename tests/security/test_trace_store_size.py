"""A function chooses its fetches' URLs (64 KB each) and makes up to 10,000 of them in one
invocation: a span each, its URL whole, made one trace of megabytes. Over the server's 8 MiB
payload its message failed the export, and every other trace of the batch (other tenants')
was lost; just under it, a few events filled the 128 MiB store and evicted everyone's. Now
an invocation's first 100 fetches get a span, URLs cut to 1 KB, and a trace is stored in
messages of at most 1 MiB."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from nats.aio.client import Client as NatsClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.trace_store import TraceStoreExporter, read_trace
from services.common.tracer import TracerProvider
from services.executor.observe import MAX_SPAN_URL_CHARS, UNTRACED_FETCHES, record_fetches
from services.runtime import RequestTrace
from tests.spans import record_spans


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    yield from record_spans()


def test_an_invocations_fetches_make_a_bounded_number_of_small_spans(
    recorded: InMemorySpanExporter,
) -> None:
    invoke = trace.get_tracer("test").start_span("invoke")
    now = time.time_ns()
    fetches = [
        RequestTrace("GET", f"https://api.example/{i}/" + "a" * 60_000, 200, 1.0, start_ns=now)
        for i in range(150)
    ]
    record_fetches(invoke, fetches)
    invoke.end()
    spans = recorded.get_finished_spans()
    fetch_spans = [s for s in spans if s.name == "GET"]
    assert len(fetch_spans) == 100
    assert all(len(str(s.attributes["url.full"])) <= MAX_SPAN_URL_CHARS for s in fetch_spans)
    (ended,) = [s for s in spans if s.name == "invoke"]
    assert ended.attributes[UNTRACED_FETCHES] == 50


async def test_a_trace_past_the_payload_limit_loses_no_other_trace(
    nats_client: NatsClient, nats_url: str
) -> None:
    tracer = TracerProvider().get_tracer("test")  # no processor: one batch, exported below
    fat = tracer.start_span("fat")
    context = trace.set_span_in_context(fat)
    # Twelve spans of 800 KB in one trace (9.6 MB, past the 8 MiB payload limit) and a
    # neighbour's trace, exported together.
    children = [
        tracer.start_span(f"child {i}", context=context, attributes={"blob": "b" * 800_000})
        for i in range(12)
    ]
    neighbour = tracer.start_span("neighbour")
    for span in [*children, fat, neighbour]:
        span.end()
    exporter = TraceStoreExporter(nats_url)
    try:
        assert exporter.export([*children, fat, neighbour]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    js = nats_client.jetstream()
    kept = await read_trace(js, format(neighbour.get_span_context().trace_id, "032x"))
    assert [s["name"] for s in kept.spans] == ["neighbour"]
    fat_trace = await read_trace(js, format(fat.get_span_context().trace_id, "032x"))
    assert len(fat_trace.spans) >= 9  # the store's read budget (8 MiB) ends the rest
