"""The trace store's stream: kept in memory (spans are a debugging aid: no disk sync per span),
and a file stream left by an earlier release is replaced rather than failing the exporter."""

from __future__ import annotations

import contextlib

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import StorageType, StreamConfig

from services.common.trace_store import STREAM, ensure_stream


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

    await ensure_stream(js, retention_seconds=120)  # a memory stream is updated in place
    await js.publish("traces.stream-test", b"{}")
    info = await js.stream_info(STREAM)
    assert info.config.max_age == 120 and info.state.messages == 1
