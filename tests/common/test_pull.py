"""The pull loop keeps asking when JetStream refuses the subscription at first (as a cluster
does while it elects leaders after a partition heals): the process consumes once it can."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from services.common.pull import pull_forever
from tests.eventually import eventually


async def test_a_refused_subscription_is_asked_again_until_the_stream_exists(
    nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.common.pull")
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"pull-{name.lower()}.x"
    got: list[Msg] = []
    arrived = asyncio.Event()
    stopping = asyncio.Event()

    async def room() -> int:
        return 10

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            got.append(msg)
            await msg.ack()
        if got:
            arrived.set()

    task = asyncio.create_task(
        pull_forever(
            js,
            subjects=subject,
            stream=name,
            durable="puller",
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
            room=room,
            handle=handle,
            stopping=stopping,
        )
    )
    try:
        # The stream is missing: the subscription is refused, and asked again.
        await eventually(
            lambda: task.done() or "cannot pull from" in caplog.text, "a refused subscription"
        )
        assert not task.done(), task.exception()
        await js.add_stream(StreamConfig(name=name, subjects=[subject]))
        await js.publish(subject, b"one")
        async with asyncio.timeout(30):
            await arrived.wait()
        assert [m.data for m in got] == [b"one"]
    finally:
        stopping.set()
        async with asyncio.timeout(10):
            await task
        await js.delete_stream(name)
