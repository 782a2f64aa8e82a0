"""A workspace's replay operations are listed whole while replays write theirs. The list read
the bucket with nats-py's KV watch, which says "no more" when its consumer reports nothing
pending before any entry came — as it does while others write: with another workspace's
replays reporting progress, 46 of 100 lists of 20 operations came back empty, and the start-up
scan missed a replay to take over 30 times in 50. Then, read to the count pending at its start,
a record rewritten meanwhile came twice and hid another, and one expiring meanwhile was waited
for until the read failed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient

from services.retrier import operations as operations_module
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


def after_first_fetch(operations: Operations, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` once, right after the first fetch of the next read returns."""
    js = operations._js
    subscribe = js.pull_subscribe

    async def pull_subscribe(*args: Any, **kwargs: Any) -> Any:
        sub = await subscribe(*args, **kwargs)
        fetch, done = sub.fetch, []

        async def fetch_then_act(*a: Any, **k: Any) -> Any:
            msgs = await fetch(*a, **k)
            if not done:
                done.append(True)
                await action()
            return msgs

        sub.fetch = fetch_then_act
        return sub

    js.pull_subscribe = pull_subscribe  # type: ignore[method-assign]


async def test_a_list_is_whole_while_the_workspaces_own_replays_write(
    nats_client: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counting to the number pending at the start, a record rewritten during the read came
    # twice and took another's place: a running replay's progress hid one of the list.
    monkeypatch.setattr(operations_module, "READ_BATCH", 1)  # a list of several batches
    operations = Operations(nats_client.jetstream())
    await operations.open()
    workspace = f"ws_{uuid.uuid4().hex[:10]}"
    a, b, c = records(workspace, 3)
    for record in (a, b, c):
        await operations.write(record)
    (d,) = records(workspace, 1)

    async def replays_progress_and_start() -> None:
        a.replayed = b.replayed = c.replayed = 50
        await operations.write(a)
        await operations.write(b)
        await operations.write(d)  # begun meanwhile: came before c's progress
        await operations.write(c)

    after_first_fetch(operations, replays_progress_and_start)
    listed = [r.name for r in await operations.list(workspace)]
    assert len(listed) == len(set(listed)), "a record listed twice"
    assert {a.name, b.name, c.name} <= set(listed)  # d, begun meanwhile, may be or not
    assert {r.name: r.replayed for r in await operations.list(workspace)}[a.name] == 50


async def test_a_record_expiring_during_a_list_ends_it(
    nats_client: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One counted at the start and expired (a week old) before it came was waited for: the
    # list failed after READ_SECONDS.
    bucket = f"ops_expiring_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(operations_module, "BUCKET", bucket)
    monkeypatch.setattr(operations_module, "_STREAM", f"KV_{bucket}")
    monkeypatch.setattr(operations_module, "KEPT", timedelta(seconds=1))  # a week, shortened
    monkeypatch.setattr(operations_module, "READ_BATCH", 1)
    js = nats_client.jetstream()
    operations = Operations(js)
    await operations.open()
    try:
        workspace = f"ws_{uuid.uuid4().hex[:10]}"
        for record in records(workspace, 3):
            await operations.write(record)
        after_first_fetch(operations, lambda: asyncio.sleep(2.5))  # the others expire
        started = time.monotonic()
        listed = await operations.list(workspace)
        assert len(listed) <= 1
        assert time.monotonic() - started < 2.5 + 2, "the expired records were waited for"
    finally:
        await js.delete_key_value(bucket)
