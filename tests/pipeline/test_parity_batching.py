"""Issue 11: a function with only onBatch gets every event, at any volume; an event whose type
has no single-event handler goes to onBatch instead of being discarded; a pack whose events
take both paths is settled once, each event with its own outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from services.common import streams
from services.executor.defer import DEFER_MAX_SECONDS
from tests.eventually import eventually
from tests.pipeline.conftest import SHARED_ACK_WAIT_SECONDS, Platform, Sink

BATCH_ONLY = """
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/batch', {method: 'POST', body: JSON.stringify(events)})
}
"""
TRACK_AND_BATCH = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint + '/single', {method: 'POST', body: JSON.stringify(event)})
  if (event.properties.fail) throw new RetryError('try ' + event.messageId + ' later')
}
async function onBatch(events, settings) {
  await fetch(settings.endpoint + '/batch', {method: 'POST', body: JSON.stringify(events)})
}
"""


def event(kind: str, message_id: str, **properties: Any) -> dict[str, Any]:
    """Return a minimal event of a type, with properties (traits for identify and group)."""
    out: dict[str, Any] = {"type": kind, "userId": "u1", "messageId": message_id}
    if kind == "track":
        out["event"] = "Order Completed"
    if kind == "group":
        out["groupId"] = "g1"
    if kind == "alias":
        out["previousId"] = "u0"
    out["traits" if kind in ("identify", "group") else "properties"] = properties
    return out


async def post_batch(platform: Platform, events: list[dict[str, Any]]) -> None:
    """Send events in one /v1/batch request (one pack)."""
    resp = await platform.http.post(
        "/v1/batch", json={"batch": events}, auth=(platform.write_key, "")
    )
    assert resp.status_code == 200, resp.text


async def counters(
    platform: Platform,
    instance_id: str,
    until: Callable[[dict[str, int]], bool],
    seconds: float = 30,
) -> dict[str, int]:
    """Poll the instance's delivery counters until `until` holds; return them."""
    conn = await asyncpg.connect(platform.registry.database_url)
    names = ("delivered", "retried", "discarded", "failed")

    async def read() -> dict[str, int]:
        row = await conn.fetchrow(
            "SELECT "
            + ", ".join(f"coalesce(sum({n}), 0)::int AS {n}" for n in names)
            + " FROM delivery_minute WHERE instance_id = $1",
            instance_id,
        )
        return {n: int(row[n]) for n in names} if row else dict.fromkeys(names, 0)

    try:
        return await eventually(
            read, f"the delivery counters of {instance_id}", until=until, seconds=seconds
        )
    finally:
        await conn.close()


async def all_packs_settled(
    nats_client: NatsClient, seconds: float = 2 * SHARED_ACK_WAIT_SECONDS + DEFER_MAX_SECONDS
) -> None:
    """Wait until the executors' EVENTS consumer has no pack to deliver or awaiting an ack.

    The consumer is the session's: a pack another test's executor held when it went away is
    redelivered only after the consumer's ack wait, and one handed back for its instance's
    share after its defer wait, hence the long bound (a settled consumer returns at once)."""
    js = nats_client.jetstream()
    await eventually(
        lambda: js.consumer_info(streams.EVENTS_STREAM, "executor"),
        "every pack delivered and acked",
        until=lambda info: not info.num_pending and not info.num_ack_pending,
        seconds=seconds,
    )


async def no_more_requests(sink: Sink, count: int, seconds: float = 1.0) -> None:
    """Check the sink gets no request beyond `count` within `seconds` (no redelivery)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds), sink.changed:
            await sink.changed.wait_for(lambda: len(sink.bodies) > count)


async def test_an_on_batch_only_function_gets_a_lone_event_without_the_batch_wait(
    platform: Platform, sink: Sink, nats_client: NatsClient
) -> None:
    iid = await platform.instance(BATCH_ONLY, sink.url)  # default wait: 10 s
    started = time.monotonic()
    await post_batch(platform, [event("track", "lone-1")])
    await sink.wait_for(1, seconds=5)
    assert time.monotonic() - started < 5, "a lone event waited for a batch"
    assert sink.paths == ["/batch"]
    assert sink.bodies == [[event("track", "lone-1") | {"receivedAt": ANY, "timestamp": ANY}]]
    got = await counters(platform, iid, lambda c: c["delivered"] == 1)
    assert got == {"delivered": 1, "retried": 0, "discarded": 0, "failed": 0}
    await all_packs_settled(nats_client)


async def test_an_on_batch_only_function_gets_every_type_at_low_volume(
    platform: Platform, sink: Sink
) -> None:
    iid = await platform.instance(BATCH_ONLY, sink.url)
    kinds = ["track", "identify", "page", "screen", "group", "alias"]
    for n, kind in enumerate(kinds):  # one request each, under 1 event/s for the instance
        await post_batch(platform, [event(kind, f"low-{n}")])
        await sink.wait_for(n + 1, seconds=5)
    assert sink.paths == ["/batch"] * len(kinds)
    assert [[e["type"] for e in b] for b in sink.bodies] == [[k] for k in kinds]
    got = await counters(platform, iid, lambda c: c["delivered"] == len(kinds))
    assert got["discarded"] == 0, "no EventNotSupported for a function with onBatch"


async def test_one_pack_split_between_a_handler_and_on_batch_settles_once(
    platform: Platform, sink: Sink, nats_client: NatsClient
) -> None:
    iid = await platform.instance(TRACK_AND_BATCH, sink.url)
    retries = await nats_client.jetstream().subscribe(f"retry.*.{iid}", ordered_consumer=True)
    await post_batch(
        platform,
        [
            event("track", "mix-ok"),
            event("identify", "mix-identify"),
            event("track", "mix-fail", fail=True),
            event("group", "mix-group"),
        ],
    )
    await sink.wait_for(4)
    singles = [
        b["messageId"] for b, p in zip(sink.bodies, sink.paths, strict=True) if p == "/single"
    ]
    arrays = [b for b, p in zip(sink.bodies, sink.paths, strict=True) if p == "/batch"]
    assert sorted(singles) == ["mix-fail", "mix-ok"], "tracks go to onTrack at low volume"
    assert [[e["messageId"] for e in a] for a in arrays] == [["mix-identify", "mix-group"]]
    # Only the failed track is retried; the pack is acked once every event has its outcome.
    msg = await retries.next_msg(timeout=30)
    assert [e["messageId"] for e in orjson.loads(msg.data)] == ["mix-fail"]
    assert msg.headers is not None and msg.headers[streams.COUNT] == "1"
    got = await counters(platform, iid, lambda c: c["delivered"] + c["retried"] == 4)
    assert got == {"delivered": 3, "retried": 1, "discarded": 0, "failed": 0}
    await all_packs_settled(nats_client)
    await no_more_requests(sink, 4)


async def test_an_on_batch_only_function_batches_with_volume(
    platform: Platform, sink: Sink, nats_client: NatsClient
) -> None:
    iid = await platform.instance(BATCH_ONLY, sink.url, batch_size=50, batch_wait_ms=500)
    for start in range(0, 1000, 100):
        await post_batch(platform, [event("track", f"vol-{i}") for i in range(start, start + 100)])
    events = await sink.wait_for(1000)
    assert {e["messageId"] for e in events} == {f"vol-{i}" for i in range(1000)}
    assert all(isinstance(b, list) and len(b) <= 50 for b in sink.bodies)
    assert max(len(b) for b in sink.bodies) == 50
    await counters(platform, iid, lambda c: c["delivered"] == 1000)
    await all_packs_settled(nats_client)


class _Any:
    """Equal to anything (for fields the router fills)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


ANY: Any = _Any()
