"""The pull loop keeps asking when JetStream refuses the subscription at first (as a cluster
does while it elects leaders after a partition heals): the process consumes once it can. One
open request serves messages as they are stored, and never more than there is room for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig, StreamConsumerLimits

from services.common.pull import pull_forever
from tests.eventually import eventually


def pulling(
    nc: NatsClient,
    stream: str,
    durable: str,
    room: Callable[[], Awaitable[int]],
    handle: Callable[[list[Msg]], Awaitable[None]],
    config: ConsumerConfig | None = None,
) -> tuple[asyncio.Task[None], asyncio.Event]:
    """Start the pull loop on `stream` (subject `<stream lower case>.x`); return it and its stop."""
    stopping = asyncio.Event()
    task = asyncio.create_task(
        pull_forever(
            nc,
            nc.jetstream(),
            subjects=f"{stream.lower()}.x",
            stream=stream,
            durable=durable,
            config=config or ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
            room=room,
            handle=handle,
            stopping=stopping,
        )
    )
    return task, stopping


def acking(
    got: list[bytes],
) -> tuple[Callable[[], Awaitable[int]], Callable[[list[Msg]], Awaitable[None]]]:
    """Return a pull loop's room (10 at a time) and handler keeping each message's data in
    `got` and acknowledging it."""

    async def room() -> int:
        return 10

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            got.append(msg.data)
            await msg.ack()

    return room, handle


async def stop(task: asyncio.Task[None], stopping: asyncio.Event) -> None:
    stopping.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_refused_subscription_is_asked_again_until_the_stream_exists(
    nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.common.pull")
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    got: list[Msg] = []
    arrived = asyncio.Event()

    async def room() -> int:
        return 10

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            got.append(msg)
            await msg.ack()
        if got:
            arrived.set()

    task, stopping = pulling(nats_client, name, "puller", room, handle)
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


async def test_one_open_request_serves_messages_as_they_are_stored(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    await js.add_stream(StreamConfig(name=name, subjects=[subject]))
    requests: list[bytes] = []

    async def count(msg: Msg) -> None:
        requests.append(msg.data)

    watch = await nats_client.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{name}.puller", cb=count)
    got: list[bytes] = []
    changed = asyncio.Event()

    async def room() -> int:
        return 100

    async def handle(msgs: list[Msg]) -> None:
        for msg in msgs:
            got.append(msg.data)
            await msg.ack()
        changed.set()

    task, stopping = pulling(nats_client, name, "puller", room, handle)
    try:
        async with asyncio.timeout(30):
            for i in range(40):  # one at a time, each awaited by the consumer
                await js.publish(subject, str(i).encode())
                while len(got) <= i:
                    changed.clear()
                    await changed.wait()
        assert got == [str(i).encode() for i in range(40)]
        # A request per message (or two, as fetch makes) would be 40 or more; the open
        # request asked for 100 and is still serving (an idle one is renewed each second).
        assert 1 <= len(requests) <= 5, requests
    finally:
        await stop(task, stopping)
        await watch.unsubscribe()
        await js.delete_stream(name)


async def test_no_more_is_asked_for_than_there_is_room_for(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    await js.add_stream(StreamConfig(name=name, subjects=[subject]))
    for i in range(20):
        await js.publish(subject, str(i).encode())
    held: list[Msg] = []
    freed = asyncio.Condition()
    changed = asyncio.Event()

    async def room() -> int:
        async with freed:
            await freed.wait_for(lambda: len(held) < 5)
            return 5 - len(held)

    async def handle(msgs: list[Msg]) -> None:
        held.extend(msgs)
        changed.set()

    config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60)
    task, stopping = pulling(nats_client, name, "holder", room, handle, config)
    try:
        async with asyncio.timeout(30):
            while len(held) < 5:
                changed.clear()
                await changed.wait()
            info = await js.consumer_info(name, "holder")
            # The request for 5 is fulfilled and none is open while there is no room.
            assert info.num_ack_pending == 5 and info.num_waiting == 0, info
            assert len(held) == 5
            async with freed:
                for msg in held:
                    await msg.ack()
                done = [m.data for m in held]
                held.clear()
                freed.notify_all()
            while len(held) < 5:
                changed.clear()
                await changed.wait()
        assert done + [m.data for m in held] == [str(i).encode() for i in range(10)]
    finally:
        await stop(task, stopping)
        await js.delete_stream(name)


async def test_a_durable_made_under_other_settings_is_given_the_current_ones_keeping_its_place(
    nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    # A durable consumer outlives the processes reading it: made by an earlier version (the
    # executor's bound of unacknowledged packs was 2,048 for the whole fleet) or under other
    # settings, it kept them for ever, whatever the processes were configured with.
    caplog.set_level(logging.INFO, logger="services.common.pull")
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    await js.add_stream(StreamConfig(name=name, subjects=[subject]))
    old = ConsumerConfig(
        durable_name="puller",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_ack_pending=2048,
        filter_subject=subject,
    )
    await js.add_consumer(name, config=old)
    for i in range(3):
        await js.publish(subject, str(i).encode())
    first = await js.pull_subscribe_bind("puller", name)
    (taken,) = await first.fetch(1)
    await taken.ack_sync()
    await first.unsubscribe()

    got: list[bytes] = []
    room, handle = acking(got)
    new = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=120.0, max_ack_pending=20_000)
    task, stopping = pulling(nats_client, name, "puller", room, handle, new)
    try:
        await eventually(lambda: len(got) == 2, "the two messages not acknowledged yet")
    finally:
        await stop(task, stopping)
    info = await js.consumer_info(name, "puller")
    assert (info.config.ack_wait, info.config.max_ack_pending) == (120.0, 20_000)
    assert got == [b"1", b"2"]  # its place kept: the acknowledged message is not read again
    assert "max_ack_pending 2048 -> 20000" in caplog.text
    assert "ack_wait 30.0 -> 120.0" in caplog.text


async def test_a_refused_update_leaves_the_consumer_read_as_it_is(
    nats_client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    # The stream caps its consumers' pending messages below what the processes ask for: the
    # server refuses the update, and the processes read with the settings the consumer has
    # rather than not at all.
    caplog.set_level(logging.INFO, logger="services.common.pull")
    js = nats_client.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8].upper()}"
    subject = f"{name.lower()}.x"
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[subject],
            consumer_limits=StreamConsumerLimits(max_ack_pending=100),
        )
    )
    old = ConsumerConfig(durable_name="puller", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=50)
    await js.add_consumer(name, config=old)
    await js.publish(subject, b"0")
    got: list[bytes] = []
    room, handle = acking(got)
    new = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000)
    task, stopping = pulling(nats_client, name, "puller", room, handle, new)
    try:
        await eventually(lambda: got == [b"0"], "the message, read all the same")
    finally:
        await stop(task, stopping)
    assert (await js.consumer_info(name, "puller")).config.max_ack_pending == 50
    assert "keeps its settings: the update was refused" in caplog.text
