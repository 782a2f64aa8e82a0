"""A sender holding only a write key tries to smuggle headers to a destination through the
trace context an instance with propagate_trace forwards: a malformed traceparent, a tracestate
past W3C's limits, members with foreign characters, in HTTP headers or gRPC metadata. Only
well-formed W3C trace context goes out (a malformed one is replaced by the platform's own
trace), never the sender's bytes."""

from __future__ import annotations

import asyncio
import re

import grpc
import orjson
import pytest

from eventfn_api.router.v1 import router_pb2 as pb
from eventfn_api.router.v1 import router_pb2_grpc
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.registry.conftest import registry

__all__ = ["platform", "registry", "sink"]  # fixtures

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# W3C trace-context: at most 32 list members, key=value with a restricted alphabet.
KEY = r"[a-z0-9][_0-9a-z\-*/@]{0,255}"
VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
MEMBER = re.compile(f"{KEY}={VALUE}")
CODE = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: '{}'});
}
"""
ATTACKER_TRACE = "deadbeefdeadbeefdeadbeefdeadbeef"
CASES = [
    # Malformed traceparents: a version byte of ff, upper-case and over-long fields.
    ("ff-" + ATTACKER_TRACE + "-b7ad6b7169203331-01", "a=1"),
    ("00-" + ATTACKER_TRACE.upper() + "-B7AD6B7169203331-01", "a=1"),
    ("00-" + ATTACKER_TRACE + "00-b7ad6b7169203331-01", "a=1"),
    # A valid traceparent with a tracestate past W3C's 32 members, and one with members
    # a destination's parser could read as something else.
    ("00-" + ATTACKER_TRACE + "-b7ad6b7169203331-01", ",".join(f"k{i}=v" for i in range(64))),
    ("00-" + ATTACKER_TRACE + "-b7ad6b7169203331-01", "x=1;set-cookie:a=b,Evil Key=v"),
]


async def _forwarded(sink: Sink) -> dict[str, str]:
    """Wait for the destination's request and return its headers."""
    async with asyncio.timeout(30), sink.changed:
        await sink.changed.wait_for(lambda: len(sink.headers) >= 1)
    (sent,) = sink.headers[-1:]
    return sent


def _assert_well_formed(sent: dict[str, str], traceparent: str) -> None:
    assert TRACEPARENT.fullmatch(sent["traceparent"]), sent["traceparent"]
    if not traceparent.startswith("00-" + ATTACKER_TRACE + "-"):
        assert ATTACKER_TRACE not in sent["traceparent"]  # malformed: a trace of our own
    members = [m.strip() for m in sent.get("tracestate", "").split(",") if m.strip()]
    assert len(members) <= 32
    assert all(MEMBER.fullmatch(m) for m in members), members
    assert "set-cookie" not in sent and "evil key" not in str(sent).lower()


@pytest.mark.parametrize(("traceparent", "tracestate"), CASES)
async def test_only_well_formed_trace_context_reaches_a_destination(
    platform: Platform, sink: Sink, traceparent: str, tracestate: str
) -> None:
    await platform.instance(CODE, sink.url, propagate_trace=True)
    resp = await platform.http.post(
        "/v1/track",
        json={"userId": "u", "event": "Probe", "messageId": f"probe-{len(sink.paths)}"},
        auth=(platform.write_key, ""),
        headers={"traceparent": traceparent, "tracestate": tracestate},
    )
    assert resp.status_code == 200  # trace context is never a reason to refuse an event
    _assert_well_formed(await _forwarded(sink), traceparent)


@pytest.mark.parametrize(("traceparent", "tracestate"), CASES)
async def test_only_well_formed_trace_context_from_grpc_metadata_reaches_a_destination(
    platform: Platform, sink: Sink, traceparent: str, tracestate: str
) -> None:
    await platform.instance(CODE, sink.url, propagate_trace=True)
    event = {"type": "track", "userId": "u", "event": "Probe", "messageId": "grpc-probe"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.router.grpc_port}") as channel:
        answer = await router_pb2_grpc.RouterStub(channel).Ingest(
            pb.IngestRequest(write_key=platform.write_key, events_json=orjson.dumps([event])),
            metadata=(("traceparent", traceparent), ("tracestate", tracestate)),
        )
    assert answer.accepted == 1  # trace context is never a reason to refuse an event
    _assert_well_formed(await _forwarded(sink), traceparent)
