"""One trace per event: ingest, route and invoke spans continue the caller's W3C trace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink
from tests.pipeline.test_delivery import SINGLE
from tests.spans import record_spans

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    yield from record_spans()


async def test_invoke_span_continues_the_callers_trace(
    platform: Platform, sink: Sink, spans: InMemorySpanExporter
) -> None:
    await platform.instance(SINGLE, sink.url)
    resp = await platform.http.post(
        "/v1/track",
        json={"userId": "u", "event": "Traced", "messageId": "t-1"},
        auth=(platform.write_key, ""),
        headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    assert resp.status_code == 200
    await sink.wait_for(1)
    invokes = await eventually(  # the span ends once the invocation has its response
        lambda: [s for s in spans.get_finished_spans() if s.name == "invoke"],
        "an ended invoke span",
        seconds=10,
    )
    assert any(format(s.context.trace_id, "032x") == TRACE_ID for s in invokes), [
        format(s.context.trace_id, "032x") for s in invokes
    ]
    ours = [s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == TRACE_ID]
    assert {"ingest", "route", "invoke"} <= {s.name for s in ours}
