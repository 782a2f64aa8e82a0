"""The gate every RPC passes: a SERVER span continuing the caller's trace, the call timed by
method and status code, and errors turned into statuses (a bug's text never reaches the
caller). Through a real grpc.aio server built as every service builds its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import rpc
from services.common.errors import NotFound
from tests.eventually import eventually
from tests.spans import record_spans

SERVICE = "eventfn.test.v1.Probe"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


async def _ok(request: StringValue, context: Any) -> StringValue:
    return StringValue(value=f"echo {request.value}")


async def _refuse(request: StringValue, context: Any) -> StringValue:
    raise NotFound("probe", request.value)


async def _break(request: StringValue, context: Any) -> StringValue:
    raise RuntimeError("secret detail of a bug")


async def _abort(request: StringValue, context: Any) -> StringValue:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "the store is down")
    raise AssertionError("unreachable")


async def _stream(request: StringValue, context: Any) -> AsyncIterator[StringValue]:
    for n in range(2):
        yield StringValue(value=f"{request.value} {n}")


def _handlers() -> grpc.GenericRpcHandler:
    def unary(fn: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, StringValue.FromString, StringValue.SerializeToString
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Ok": unary(_ok),
            "Refuse": unary(_refuse),
            "Break": unary(_break),
            "Abort": unary(_abort),
            "Stream": grpc.unary_stream_rpc_method_handler(
                _stream, StringValue.FromString, StringValue.SerializeToString
            ),
        },
    )


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    yield from record_spans()


@pytest.fixture
async def probe(spans: InMemorySpanExporter) -> AsyncIterator[tuple[grpc.aio.Channel, Any]]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    server, port, health = rpc.create_server(
        address="127.0.0.1:0",
        register=[lambda s: s.add_generic_rpc_handlers([_handlers()])],
        service_names=[SERVICE],
        meter=meter,
    )
    await server.start()
    await rpc.set_serving(health, [SERVICE])
    async with AsyncExitStack() as stack:
        stack.push_async_callback(server.stop, None)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stack.push_async_callback(channel.close)
        yield channel, reader


async def _call(channel: grpc.aio.Channel, method: str, value: str, **kw: Any) -> Any:
    call = channel.unary_unary(
        f"/{SERVICE}/{method}", StringValue.SerializeToString, StringValue.FromString
    )
    return await call(StringValue(value=value), **kw)


def _server_spans(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans.get_finished_spans()
        if s.name == f"/{SERVICE}/{method}" and s.kind is SpanKind.SERVER
    ]


async def _ended(spans: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    """Await a call's server span: it ends once its answer is sent, maybe after the caller
    has it."""
    return await eventually(lambda: _server_spans(spans, method), f"a {method} server span")


def _durations(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != "rpc.server.duration":
                    continue
                for point in metric.data.data_points:
                    key = (
                        str(point.attributes["rpc.method"]),
                        str(point.attributes["rpc.grpc.status_code"]),
                    )
                    counts[key] = counts.get(key, 0) + point.count
    return counts


async def test_a_call_continues_the_callers_trace_in_a_server_span(
    probe: tuple[grpc.aio.Channel, Any], spans: InMemorySpanExporter
) -> None:
    channel, _ = probe
    answer = await _call(
        channel, "Ok", "hi", metadata=(("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),)
    )
    assert answer.value == "echo hi"
    [span] = [s for s in await _ended(spans, "Ok") if s.context.trace_id == int(TRACE_ID, 16)]
    assert span.parent is not None and span.parent.span_id == int(CALLER_SPAN, 16)
    attributes = dict(span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert (attributes["rpc.service"], attributes["rpc.method"]) == (SERVICE, "Ok")
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["net.peer.ip"] == "127.0.0.1"
    assert span.status.status_code is StatusCode.UNSET


async def test_refusals_bugs_and_aborts_end_with_their_status_on_the_call_and_its_span(
    probe: tuple[grpc.aio.Channel, Any], spans: InMemorySpanExporter
) -> None:
    channel, reader = probe
    expected = {
        "Refuse": grpc.StatusCode.NOT_FOUND,
        "Break": grpc.StatusCode.INTERNAL,
        "Abort": grpc.StatusCode.UNAVAILABLE,
    }
    for method, code in expected.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _call(channel, method, f"{method}-1")
        assert caught.value.code() is code
        details = caught.value.details() or ""
        assert "secret detail" not in details
        if method == "Refuse":
            assert details == "probe 'Refuse-1' not found"
        span = (await _ended(spans, method))[-1]
        assert dict(span.attributes or {})["rpc.grpc.status_code"] == code.value[0]
        # The caller's mistake is not the server's fault; a bug and an outage are.
        failed = span.status.status_code is StatusCode.ERROR
        assert failed == (method != "Refuse")
    [bug] = _server_spans(spans, "Break")[-1:]
    assert [e.name for e in bug.events] == ["exception"]
    durations = _durations(reader)
    for method, code in expected.items():
        assert durations[(f"/{SERVICE}/{method}", code.name)] == 1
    await _call(channel, "Ok", "again")
    assert _durations(reader)[(f"/{SERVICE}/Ok", "OK")] >= 1


async def test_control_characters_are_refused_before_the_servicer_runs(
    probe: tuple[grpc.aio.Channel, Any],
) -> None:
    channel, reader = probe
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(channel, "Ok", "nul\x00here")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "control characters" in (caught.value.details() or "")
    assert _durations(reader)[(f"/{SERVICE}/Ok", "INVALID_ARGUMENT")] == 1


async def test_a_stream_is_one_span_and_health_checks_get_none(
    probe: tuple[grpc.aio.Channel, Any], spans: InMemorySpanExporter
) -> None:
    channel, _ = probe
    before = len(spans.get_finished_spans())
    stream = channel.unary_stream(
        f"/{SERVICE}/Stream", StringValue.SerializeToString, StringValue.FromString
    )
    got = [m.value async for m in stream(StringValue(value="s"))]
    assert got == ["s 0", "s 1"]
    assert len(await _ended(spans, "Stream")) >= 1
    health = health_pb2_grpc.HealthStub(channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    names = [s.name for s in spans.get_finished_spans()[before:]]
    assert not [n for n in names if "Health" in n]
