"""One event's journey is one trace: ingest → route → invoke (ERROR) → retry schedule → invoke
(OK) → fetch, each with the right parent, exported to a real OTLP receiver and to the
platform's trace store (`eventfn trace`); no secret in it."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.cli.trace_commands import render
from services.common.tracer import TracerProvider
from tests.eventually import eventually
from tests.observability.conftest import Platform, Receiver
from tests.pipeline.conftest import Sink
from tests.registry.conftest import auth
from tests.retrier.conftest import StartRetrier

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SECRET = "sk_live_never_in_a_span_51c2"
CODE = """
let failed = false;
async function onTrack(event, settings) {
  if (!failed) { failed = true; throw new RetryError('the API said later') }
  await fetch(settings.endpoint + '/ok?key=' + settings.apiKey, {
    method: 'POST', headers: {'Authorization': 'Bearer ' + settings.apiKey},
    body: JSON.stringify(event),
  })
}
"""


def _attribute(span: trace_pb2.Span, key: str) -> str:
    return next((a.value.string_value for a in span.attributes if a.key == key), "")


def _one(spans: list[trace_pb2.Span], name: str, status: int | None = None) -> trace_pb2.Span:
    found = [s for s in spans if s.name == name and (status is None or s.status.code == status)]
    assert len(found) == 1, (name, [(s.name, s.status.code) for s in spans])
    return found[0]


async def test_an_events_journey_is_one_trace(
    platform: Platform,
    sink: Sink,
    start_retrier_on: StartRetrier,
    receiver: Receiver,
    exported: TracerProvider,
) -> None:
    await start_retrier_on()
    owner = auth(platform.owner)
    iid = await platform.instance(CODE, sink.url, secret=SECRET)

    resp = await platform.http.post(
        "/v1/track",
        json={"userId": "u", "event": "Journey", "messageId": "journey-1"},
        auth=(platform.write_key, ""),
        headers={"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"},
    )
    assert resp.status_code == 200
    await sink.wait_for(1)

    want = {"ingest", "route", "invoke", "retry.schedule", "POST"}
    await receiver.wait_for(
        lambda: (
            want <= {s.name for s in receiver.of_trace(TRACE_ID)}
            and len([s for s in receiver.of_trace(TRACE_ID) if s.name == "invoke"]) >= 2
        ),
        20,
    )
    spans = receiver.of_trace(TRACE_ID)
    error, ok = trace_pb2.Status.STATUS_CODE_ERROR, trace_pb2.Status.STATUS_CODE_UNSET
    ingest = _one(spans, "ingest")
    route = _one(spans, "route")
    failed = _one(spans, "invoke", error)
    schedules = [s for s in spans if s.name == "retry.schedule"]  # held, then republished
    scheduled = next(
        s for s in schedules if _attribute(s, "eventfn.retry.outcome") == "republished"
    )
    delivered = _one(spans, "invoke", ok)
    fetch = _one(spans, "POST")

    assert route.parent_span_id == ingest.span_id
    assert failed.parent_span_id == ingest.span_id
    assert {s.parent_span_id for s in schedules} == {failed.span_id}
    assert delivered.parent_span_id == scheduled.span_id
    assert fetch.parent_span_id == delivered.span_id
    assert fetch.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert [e.name for e in failed.events] == ["exception"]
    attributes = {a.key: a.value for a in failed.events[0].attributes}
    assert attributes["exception.type"].string_value == "RetryError"
    assert "journey-1" in [
        v.string_value
        for a in ingest.attributes
        if a.key == "eventfn.message_ids"
        for v in a.value.array_value.values
    ]
    url = {a.key: a.value.string_value for a in fetch.attributes}["url.full"]
    assert url == f"{sink.url}/ok"  # no query string: it holds the key
    assert SECRET not in str(spans)

    # The same journey from the platform's own store, as `eventfn trace journey-1` shows it.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        executor = executor_pb2_grpc.ExecutorStub(channel)
        request = executor_pb2.GetTraceRequest(parent=platform.workspace, message_id="journey-1")

        async def stored() -> executor_pb2.GetTraceResponse:
            return await executor.GetTrace(request, metadata=owner)

        found = await eventually(
            stored,
            "the journey in the trace store",
            until=lambda r: want <= {s.name for s in r.spans},
            ignoring=(grpc.aio.AioRpcError,),
        )
        assert found.trace_id == TRACE_ID
        tree = render(found.spans)
        assert tree[0].split()[4] == "ingest"  # the root, at offset 0
        assert any(line.split("  [")[0].endswith("  invoke ERROR") for line in tree)
        assert SECRET not in str(found)
        _, stranger = await platform.registry.workspace("Stranger")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await executor.GetTrace(
                executor_pb2.GetTraceRequest(parent=platform.workspace, trace_id=TRACE_ID),
                metadata=auth(stranger),
            )
        assert refused.value.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        )
        failures = await eventually(
            lambda: executor.ListDeliveryFailures(
                executor_pb2.ListDeliveryFailuresRequest(parent=platform.instance_name(iid)),
                metadata=owner,
            ),
            "the retried event's failure sample",
            until=lambda r: r.failures,
        )
        assert failures.failures[0].trace_id == TRACE_ID
