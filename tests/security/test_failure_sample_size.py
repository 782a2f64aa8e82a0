"""A failure sample kept every request of its invocation, whole, once per failed event: a
function may make 10,000 fetches of 64 KB URLs in one invocation, and a refused or failed
fetch quotes its URL again in its error, so 3 events of 100 bytes each making 100 refused
fetches were stored as 3 samples of 36 MB (20 samples per instance and minute, kept 7 days).
Now a sample keeps the invocation's last 20 requests (what `eventfn dead show` shows of the
same event), the first entry saying how many earlier ones were left out, each URL cut to
1 KB, in its error too, and each error to 2 KB."""

from __future__ import annotations

import asyncpg
import grpc
import orjson

from eventfn_api.executor.v1 import executor_pb2, executor_pb2_grpc
from services.executor.settlement import sample_requests
from services.runtime import RequestTrace
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, platform, sink
from tests.pipeline.test_delivery import batch_body, send
from tests.registry.conftest import auth, registry

__all__ = ["platform", "registry", "sink"]

KEPT = 20  # requests a sample keeps
URL_CHARS = 1024  # of a kept request's URL
ERROR_CHARS = 2048  # of a kept request's error
FETCHES_PER_EVENT = 42
# Each event: 40 fetches the egress policy refuses (their 60 KB URL quoted in the error), one
# refused by the loopback (ECONNREFUSED, its URL quoted too) and one past the 64 KB a URL may
# be (refused before it is sent), all failing; then the event is discarded.
HOSTILE = """
async function onTrack(event, settings) {
  const tail = '/' + 'a'.repeat(60000)
  await Promise.all(Array.from({length: 40}, (_, i) =>
    fetch('http://10.255.255.1/' + i + tail).catch(() => 0)))
  await fetch('http://127.0.0.1:1/closed' + tail).catch(() => 0)
  await fetch('http://127.0.0.1:1/long/' + 'b'.repeat(70000)).catch(() => 0)
  throw new ValidationError('no')
}
"""
# What a whole stored sample may take, as PostgreSQL returns it: the event (the router's
# 32 KB), logs (4,096 characters), the error (256 + 8,192 + 16,384 characters) and 21
# request entries (32 + 1,024 + 2,048 characters each, and JSON); every character at most
# 4 bytes, 6 in JSON text where it is escaped.
WORST_SAMPLE_BYTES = 32 * 1024 + 4 * (4096 + 256 + 8192 + 16384) + 21 * (6 * 3104 + 100)


async def test_a_failure_sample_keeps_a_bounded_number_of_short_requests(
    platform: Platform, sink: Sink
) -> None:
    iid = await platform.instance(HOSTILE, sink.url)
    await send(platform, batch_body(3))
    conn = await asyncpg.connect(platform.registry.database_url)
    try:
        rows = await eventually(  # failure samples are flushed every 0.2 s
            lambda: conn.fetch(
                "SELECT octet_length(requests::text) AS requests, octet_length(event) "
                "+ octet_length(logs) + octet_length(error_type) + octet_length(error_message) "
                "+ octet_length(error_stack) + octet_length(requests::text) AS whole "
                "FROM delivery_failure WHERE instance_id = $1",
                iid,
            ),
            "the three discarded events sampled",
            until=lambda rows: len(rows) >= 3,
        )
    finally:
        await conn.close()
    assert max(r["requests"] for r in rows) < 21 * (3104 + 100), rows  # ASCII, unescaped
    assert max(r["whole"] for r in rows) < WORST_SAMPLE_BYTES, rows

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        listed = await executor_pb2_grpc.ExecutorStub(channel).ListDeliveryFailures(
            executor_pb2.ListDeliveryFailuresRequest(parent=platform.instance_name(iid)),
            metadata=auth(platform.owner),
        )
    assert len(listed.failures) == 3
    for failure in listed.failures:
        left_out, *kept = failure.requests
        made = FETCHES_PER_EVENT * failure.invocation_events
        assert (left_out.method, left_out.url, left_out.status) == ("", "", 0)
        assert f"{made - KEPT:,} earlier requests" in left_out.error, left_out.error
        assert len(kept) == KEPT
        assert all(len(r.url) <= URL_CHARS and len(r.error) <= ERROR_CHARS for r in kept)
        assert all(r.error and not r.status for r in kept)
        assert all(r.url.startswith("http://") and r.url.endswith("…") for r in kept)
        # An error quoting its URL keeps what it says of it (the reason), the URL cut.
        refused = [r for r in kept if "ECONNREFUSED" in r.error]
        assert refused and all(r.url in r.error for r in refused), refused[0].error[-200:]
        assert any("URL is longer than" in r.error for r in kept)


def test_what_a_sample_keeps_of_10000_fetches_of_64_kb_urls_is_bounded() -> None:
    # The worst a function can make: refused fetches of any method (32 characters), URLs of
    # 64 KB of characters JSON escapes (6 bytes each), each quoted in its error.
    url = "http://" + "\x01" * (64 * 1024 - 7)
    error = f"request to {url} failed, reason: getaddrinfo ENOTFOUND {url[7:]}"
    made = [RequestTrace("\x02" * 32, url, None, 1.5, error=error) for _ in range(10_000)]
    left_out, *kept = sample_requests(made)
    assert (left_out["method"], left_out["url"]) == ("", "")
    assert "9,980 earlier requests" in left_out["error"]
    assert len(kept) == KEPT
    assert all(len(r["url"]) <= URL_CHARS and len(r["error"]) <= ERROR_CHARS for r in kept)
    assert len(orjson.dumps([left_out, *kept])) <= 21 * (6 * 3104 + 100)


def test_a_few_requests_are_kept_whole() -> None:
    made = [RequestTrace("GET", f"https://api.example/{i}", 200, 3.0) for i in range(KEPT)]
    kept = sample_requests(made)
    assert [r["url"] for r in kept] == [t.url for t in made]
    assert all(r["status"] == 200 and r["error"] is None for r in kept)
