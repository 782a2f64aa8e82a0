"""A hand-off the event store refuses: the pack comes again later, not at once.

The executor took every failed publish to RETRY or DEAD for NATS being down and handed the
pack back at once; a refusal that lasts (here: RETRY refuses messages of its size) ran the
function again without a pause, for ever — a core, and the destination called each time. The
pack now waits as one handed back for its instance's share (1 s, doubling up to a minute), and
is stored once the stream takes it: nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from services.common import streams
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, Sink, platform_on_own_nats, sink
from tests.registry.conftest import Registry, registry

__all__ = ["registry", "sink"]

RETRIES = """
async function onTrack(event, settings) {
  await fetch(settings.endpoint, {method: 'POST', body: JSON.stringify(event)})
  throw new RetryError('destination busy')
}
"""
WATCHED_SECONDS = 3.5


@pytest.fixture
async def data_path(
    registry: Registry, tmp_path: Path
) -> AsyncIterator[tuple[Platform, NatsClient]]:
    """A data path (no retrier: held retries stay) on a NATS server of this test's own."""
    async with platform_on_own_nats(registry, tmp_path) as (platform, nc):
        yield platform, nc


async def test_a_refused_hand_off_comes_again_later_and_is_stored_once_taken(
    data_path: tuple[Platform, NatsClient], sink: Sink
) -> None:
    platform, nc = data_path
    js = nc.jetstream()
    iid = await platform.instance(RETRIES, sink.url)
    retry = await js.stream_info(streams.RETRY_STREAM)
    await js.update_stream(retry.config.evolve(max_msg_size=64))  # refuses every hand-off

    sent = await platform.http.post(
        "/v1/track",
        auth=(platform.write_key, ""),
        json={"userId": "u", "event": "busy", "messageId": "refused-1"},
    )
    assert sent.status_code == 200
    await sink.wait_for(1)
    first = time.monotonic()
    await asyncio.sleep(WATCHED_SECONDS)  # how often it comes again in that time is the point
    invoked = len(sink.bodies)
    # At 0 s, 1 s and 3 s (delays of 1 and 2 s after its first deliveries); handed back at
    # once it came again hundreds of times.
    assert 2 <= invoked <= 4, f"{invoked} invocations in {time.monotonic() - first:.1f} s"

    await js.update_stream(retry.config)  # the stream takes hand-offs again

    async def held() -> int:
        info = await js.stream_info(streams.RETRY_STREAM, subjects_filter=">")
        return (info.state.subjects or {}).get(streams.retry_subject(platform.workspace_id, iid), 0)

    await eventually(held, "the event held for retry once RETRY takes it", seconds=30)

    async def unsettled() -> int:  # the pack is acknowledged once its hand-off is stored
        return (await js.consumer_info(streams.EVENTS_STREAM, "executor")).num_ack_pending

    await eventually(unsettled, "the pack acknowledged", until=lambda n: n == 0)
