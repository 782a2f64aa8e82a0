"""An instance with propagate_trace sends the event's W3C trace context on its function's
requests, so the destination's tracing joins the event's trace; other instances send none,
and a traceparent the function sets itself goes out as set."""

from __future__ import annotations

import asyncio

from services.common.tracer import TracerProvider
from tests.observability.conftest import Platform, Receiver
from tests.pipeline.conftest import Sink

TRACE_ID = "5c1d9e3b27f84a06b3e0c4d2a1f98e77"
CALLER_SPAN = "b7ad6b7169203331"
OWN = "00-11111111111111111111111111111111-2222222222222222-01"
CODE = f"""
async function onTrack(event, settings) {{
  await fetch(settings.endpoint + '/plain', {{method: 'POST', body: '{{}}'}});
  await fetch(settings.endpoint + '/own', {{
    method: 'POST', body: '{{}}', headers: {{'Traceparent': '{OWN}'}},
  }});
}}
"""


async def _send_traced_event(platform: Platform, sink: Sink) -> dict[str, dict[str, str]]:
    """Two instances (option on, option off) get one event of TRACE_ID; return each request's
    headers by path."""
    await platform.instance(CODE, f"{sink.url}/on", propagate_trace=True)
    await platform.instance(CODE, f"{sink.url}/off")  # the default: off
    resp = await platform.http.post(
        "/v1/track",
        json={"userId": "u", "event": "Traced", "messageId": "traced-1"},
        auth=(platform.write_key, ""),
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01", "tracestate": "v=1"},
    )
    assert resp.status_code == 200
    async with asyncio.timeout(30), sink.changed:
        await sink.changed.wait_for(lambda: len(sink.paths) >= 4)
    seen = dict(zip(sink.paths, sink.headers, strict=True))
    assert sorted(seen) == ["/off/own", "/off/plain", "/on/own", "/on/plain"]
    return seen


async def test_the_option_sends_the_events_trace_context(platform: Platform, sink: Sink) -> None:
    seen = await _send_traced_event(platform, sink)
    # Whether or not this process has a tracer provider (test order decides), the event's
    # trace goes out; without one the parent is the caller's own span, the last one known.
    version, trace_id, _parent, flags = seen["/on/plain"]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert seen["/on/plain"]["tracestate"] == "v=1"
    assert "traceparent" not in seen["/off/plain"] and "tracestate" not in seen["/off/plain"]
    for path in ("/on/own", "/off/own"):
        assert seen[path]["traceparent"] == OWN and "tracestate" not in seen[path]


async def test_the_parent_is_the_invoke_span(
    platform: Platform, sink: Sink, receiver: Receiver, exported: TracerProvider
) -> None:
    seen = await _send_traced_event(platform, sink)
    _, trace_id, parent, _ = seen["/on/plain"]["traceparent"].split("-")
    assert trace_id == TRACE_ID and parent != CALLER_SPAN
    await receiver.wait_for(
        lambda: parent in {s.span_id.hex() for s in receiver.of_trace(TRACE_ID)}, 20
    )
    (span,) = [s for s in receiver.of_trace(TRACE_ID) if s.span_id.hex() == parent]
    assert span.name == "invoke"
