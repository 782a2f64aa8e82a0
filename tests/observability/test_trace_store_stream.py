"""The trace store's stream: kept in memory (spans are a debugging aid: no disk sync per span),
a file stream left by an earlier release is replaced rather than failing the exporter, and
spans are found by trace id (also as the previous release stored them) and by messageId with
the instances that got it."""

from __future__ import annotations

import contextlib
import uuid

import nats.js.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE
from services.common.trace_store import (
    STREAM,
    ReadBudget,
    TraceStoreExporter,
    ensure_stream,
    instances_of_message,
    message_token,
    read_trace,
    traces_of_message,
)
from services.common.tracer import TracerProvider


async def test_a_file_stream_of_an_earlier_release_becomes_a_memory_stream(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(StreamConfig(name=STREAM, subjects=["traces.>"], storage=StorageType.FILE))
    await js.publish("traces.stream-test", b"{}")

    await ensure_stream(js, retention_seconds=60)
    info = await js.stream_info(STREAM)
    assert info.config.storage == StorageType.MEMORY
    assert info.config.max_age == 60 and info.config.subjects == ["traces.>"]
    assert info.config.allow_direct  # lookups read with direct-get batches

    await ensure_stream(js, retention_seconds=120)  # a memory stream is updated in place
    await js.publish("traces.stream-test", b"{}")
    info = await js.stream_info(STREAM)
    assert info.config.max_age == 120 and info.state.messages == 1


async def test_spans_are_found_by_trace_and_by_each_messageid_an_instance_got(
    nats_client: NatsClient, nats_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    exporter = TraceStoreExporter(nats_url)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    one, two = f"ins_{run}1", f"ins_{run}2"
    both = [f"a-{run}", f"b-{run}"]
    with tracer.start_as_current_span("ingest", attributes={MESSAGE_IDS_ATTRIBUTE: both}):
        with tracer.start_as_current_span("route") as route:
            first = format(route.get_span_context().trace_id, "032x")
        with tracer.start_as_current_span(
            "invoke", attributes={"eventfn.instance_id": one, MESSAGE_IDS_ATTRIBUTE: both}
        ):
            pass
    with tracer.start_as_current_span(
        "invoke", attributes={"eventfn.instance_id": two, MESSAGE_IDS_ATTRIBUTE: [f"a-{run}"]}
    ) as span:
        second = format(span.get_span_context().trace_id, "032x")
    # An ingest no instance got: found by its trace id only.
    with tracer.start_as_current_span("ingest", attributes={MESSAGE_IDS_ATTRIBUTE: [f"d-{run}"]}):
        pass
    provider.shutdown()
    # As the previous release stored a trace: under its messageId, no instance named.
    js = nats_client.jetstream()
    legacy = uuid.uuid4().hex
    old_span = {"trace_id": legacy, "name": "invoke", "start": 1, "attributes": {}}
    await js.publish(f"traces.{legacy}.{message_token(f'c-{run}')}", orjson.dumps([old_span]))

    assert [s["name"] for s in (await read_trace(js, first)).spans] == ["ingest", "route", "invoke"]
    assert [s["name"] for s in (await read_trace(js, second)).spans] == ["invoke"]
    listed = await instances_of_message(js, f"a-{run}")
    assert listed == {one: [first], two: [second]}
    assert await traces_of_message(js, f"a-{run}", listed, ReadBudget()) == [first, second]
    assert await traces_of_message(js, f"a-{run}", {two: [second]}, ReadBudget()) == [second]
    assert await instances_of_message(js, f"b-{run}") == {one: [first]}
    assert await instances_of_message(js, f"d-{run}") == {}
    assert (await read_trace(js, legacy)).spans == [old_span]
    assert await instances_of_message(js, f"c-{run}") == {}
