"""A retry storm: a function that throws `RetryError` for every event made the executor hand
every event to RETRY, which had no bound per instance: a write key and one function filled
the disk the streams share, and every held retry is re-checked by the one retrier consumer
every few minutes, so one tenant's millions slowed everyone's retries. An instance now holds
at most EVENTFN_RETRY_MAX_PER_INSTANCE retries; its retryable events past that go to DEAD at
once, replayable, with the reason — not back to EVENTS for another invocation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import nats
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from services.common import streams
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, platform_on_own_nats
from tests.registry.conftest import Registry, registry

__all__ = ["registry"]

LIMIT = 3
SENT = 10
STORMS = "async function onTrack(event) { throw new RetryError('destination down') }"


@pytest.fixture
async def storm(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Platform, NatsClient]]:
    """A data path (no retrier: held retries stay) on a NATS server of this test's own,
    whose streams every service ensures with a limit of 3 retries per instance."""
    monkeypatch.setenv("EVENTFN_RETRY_MAX_PER_INSTANCE", str(LIMIT))
    async with platform_on_own_nats(registry, tmp_path) as (platform, nc):
        yield platform, nc


async def stored(nc: NatsClient, stream: str, subject: str) -> list[nats.js.api.RawStreamMsg]:
    """Return the messages a stream holds on one subject."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    found = []
    for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
        try:
            found.append(await js.get_msg(stream, seq))
        except nats.js.errors.NotFoundError:
            continue
    return [m for m in found if m.subject == subject]


async def test_an_instance_holds_a_bounded_number_of_retries(
    storm: tuple[Platform, NatsClient],
) -> None:
    platform, nc = storm
    iid = await platform.instance(STORMS, "http://127.0.0.1:9/")
    for i in range(SENT):  # one request after another: one pack, one hand-off each
        sent = await platform.http.post(
            "/v1/track",
            auth=(platform.write_key, ""),
            json={"userId": "u", "event": "storm", "messageId": f"storm-{i}"},
        )
        assert sent.status_code == 200
    js = nc.jetstream()
    retry = streams.retry_subject(platform.workspace_id, iid)
    dead = streams.dead_subject(platform.workspace_id, iid)

    async def settled() -> int:
        consumer = await js.consumer_info(streams.EVENTS_STREAM, "executor")
        if consumer.num_ack_pending or consumer.num_pending:
            return 0
        retries = await stored(nc, streams.RETRY_STREAM, retry)
        letters = await stored(nc, streams.DEAD_STREAM, dead)
        return sum(int((m.headers or {})[streams.COUNT]) for m in [*retries, *letters])

    await eventually(settled, "every event held for retry or dead-lettered", until=SENT.__eq__)
    retries = await stored(nc, streams.RETRY_STREAM, retry)
    letters = await stored(nc, streams.DEAD_STREAM, dead)
    assert len(retries) == LIMIT
    ids = [e["messageId"] for m in [*retries, *letters] for e in orjson.loads(m.data)]
    assert sorted(ids) == sorted(f"storm-{i}" for i in range(SENT))  # each once: none lost
    for letter in letters:
        reason = (letter.headers or {})[streams.DEAD_REASON]
        assert "EVENTFN_RETRY_MAX_PER_INSTANCE" in reason
        assert "RetryError: destination down" in reason
    # Each pack ran once and was settled: the refused hand-off did not send it round again.
    consumer = await js.consumer_info(streams.EVENTS_STREAM, "executor")
    assert consumer.num_redelivered == 0
    assert consumer.delivered.consumer_seq == consumer.ack_floor.consumer_seq
