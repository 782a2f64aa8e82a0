"""`eventfn trace` shows span attributes as they were recorded."""

from __future__ import annotations

from google.protobuf import struct_pb2

from eventfn_api.executor.v1 import executor_pb2 as pb
from services.cli.trace_commands import render


def test_whole_numbers_show_as_integers_and_fractions_as_they_are() -> None:
    attributes = struct_pb2.Struct()
    attributes.update(
        {"eventfn.events": 3, "http.response.status_code": 200, "eventfn.attempt": 1.5}
    )
    span = pb.TraceSpan(span_id="a", name="POST", service="eventfn-executor", attributes=attributes)
    span.start_time.FromNanoseconds(1_000)
    span.duration.FromMilliseconds(2)
    (line,) = render([span])
    assert "events=3 " in line and "status_code=200" in line and "attempt=1.5" in line
