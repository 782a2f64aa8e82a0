"""A workspace's replay operations are listed whole while other workspaces' replays write
theirs. The list read the bucket with nats-py's KV watch, which says "no more" when its consumer
reports nothing pending before any entry came — as it does while others write: with another
workspace's replays reporting progress, 46 of 100 lists of 20 operations came back empty, and
the start-up scan missed a replay to take over 30 times in 50."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from nats.aio.client import Client as NatsClient

from services.retrier.operations import Operations, ReplayRecord

ROUNDS = 50


def records(workspace_id: str, count: int) -> list[ReplayRecord]:
    """New operation records of one workspace's instance."""
    instance = f"workspaces/{workspace_id}/instances/ins_1"
    return [Operations.new_record(workspace_id, instance, "a", "d") for _ in range(count)]


@asynccontextmanager
async def others_writing(operations: Operations) -> AsyncIterator[None]:
    """Another workspace's 50 running replays writing their progress, over and over."""
    theirs = records(f"ws_{uuid.uuid4().hex[:10]}", 50)
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await asyncio.gather(*(operations.write(r) for r in theirs))

    tasks = [asyncio.create_task(writer()) for _ in range(4)]
    await asyncio.sleep(0.3)
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def found_each_time(read: Callable[[], Awaitable[list[ReplayRecord]]]) -> list[int]:
    """Read ROUNDS times; return how many records each read found."""
    return [len(await asyncio.wait_for(read(), 10)) for _ in range(ROUNDS)]


async def test_a_list_is_whole_while_others_write(nats_client: NatsClient) -> None:
    operations = Operations(nats_client.jetstream())
    await operations.open()
    workspace = f"ws_{uuid.uuid4().hex[:10]}"
    for record in records(workspace, 20):
        await operations.write(record)
    async with others_writing(operations):
        counts = await found_each_time(lambda: operations.list(workspace))
    assert counts == [20] * ROUNDS


async def test_the_start_up_scan_finds_an_unfinished_replay_while_others_write(
    nats_client: NatsClient,
) -> None:
    operations = Operations(nats_client.jetstream())
    await operations.open()
    (stuck,) = records(f"ws_{uuid.uuid4().hex[:10]}", 1)
    await operations.write(stuck)
    missed = 0
    async with others_writing(operations):
        for _ in range(ROUNDS):
            found = {r.name for r in await asyncio.wait_for(operations._records("op.>"), 10)}
            missed += stuck.name not in found
    assert missed == 0
