"""A page of dead letters reads the packs it shows, newest first, not every pack of the
instance; a call reads at most a budget of packs and answers a short page past it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from services.common import streams
from services.retrier.dead_letters import DeadLetterStore, Letter, LetterId

PACKS = 60


class CountingStore(DeadLetterStore):
    """The store, counting its direct gets (one per pack read)."""

    reads = 0

    async def _direct(self, request: dict[str, object]) -> Any:
        self.reads += 1
        return await super()._direct(request)


async def bury_packs(js: JetStreamContext, workspace_id: str, instance_id: str) -> list[int]:
    """Store PACKS packs of two letters each (m-<pack>-<index>), another instance's between
    them; return their sequences, oldest first."""
    await streams.ensure_streams(js)
    other = streams.dead_subject(workspace_id, f"ins_{uuid.uuid4().hex[:12]}")
    acks = []
    for n in range(PACKS):
        events = [{"type": "track", "messageId": f"m-{n}-{i}"} for i in range(2)]
        headers = {streams.MSG_ID: f"d-{uuid.uuid4().hex}", streams.DEAD_REASON: "failed"}
        subject = streams.dead_subject(workspace_id, instance_id)
        acks.append(await js.publish_async(subject, orjson.dumps(events), headers=headers))
        await js.publish_async(other, b"[{}]", headers={streams.MSG_ID: uuid.uuid4().hex})
    return [ack.seq for ack in await asyncio.gather(*acks)]


def ids(letters: list[Letter]) -> list[str]:
    return [letter.message_id for letter in letters]


def newest_first(packs: range) -> list[str]:
    return [f"m-{n}-{i}" for n in reversed(packs) for i in (1, 0)]


async def test_a_page_reads_the_packs_it_shows_newest_first(nats_client: NatsClient) -> None:
    js = nats_client.jetstream()
    instance = f"ins_{uuid.uuid4().hex[:12]}"
    await bury_packs(js, "ws_1", instance)
    store = CountingStore(nats_client, js)
    page, cursor = await store.page("ws_1", instance, start=None, end=None, size=3, before=None)
    assert ids(page) == newest_first(range(58, 60))[:3]
    assert store.reads == 2  # the 4th letter says there is a next page: no 3rd pack
    # Page by page, every letter once, in order; each pack read about once.
    store.reads = 0
    seen = ids(page)
    while cursor is not None:
        page, cursor = await store.page(
            "ws_1", instance, start=None, end=None, size=7, before=cursor
        )
        seen += ids(page)
    assert seen == newest_first(range(PACKS))
    assert store.reads <= PACKS + PACKS * 2 // 7 + 1
    # An instance with no dead letter: one read answers nothing (the server's "No Results").
    store.reads = 0
    empty = await store.page("ws_1", "ins_none", start=None, end=None, size=3, before=None)
    assert empty == ([], None) and store.reads == 1
    # Below the first pack: nothing, and never the newest (an up_to_seq of 0 means no bound).
    assert await store.page(
        "ws_1", instance, start=None, end=None, size=3, before=LetterId(1, 0)
    ) == ([], None)


async def test_a_page_stops_at_its_read_budget_and_goes_on_from_there(
    nats_client: NatsClient,
) -> None:
    js = nats_client.jetstream()
    instance = f"ins_{uuid.uuid4().hex[:12]}"
    seqs = await bury_packs(js, "ws_1", instance)
    store = CountingStore(nats_client, js)
    packs = [await store.pack(seq) for seq in seqs]
    assert all(packs)
    times = [p.time for p in packs if p is not None]
    # Only the 4 oldest packs died before `end`: the walk passes 56 newer ones, 10 a call.
    seen: list[str] = []
    calls = 0
    cursor = None
    while True:
        store.reads = 0
        page, cursor = await store.page(
            "ws_1", instance, start=None, end=times[4], size=5, before=cursor, budget=10
        )
        calls += 1
        assert store.reads <= 10 and len(page) <= 5
        seen += ids(page)
        if cursor is None:
            break
    assert seen == newest_first(range(4))
    assert calls == 7  # 56 packs passed in 6 calls (empty pages), 1 for the 8 letters
    # From `start`, the walk ends at the first pack stored before it.
    store.reads = 0
    page, cursor = await store.page(
        "ws_1", instance, start=times[55], end=None, size=100, before=None
    )
    assert ids(page) == newest_first(range(55, PACKS)) and cursor is None
    assert store.reads == 6
    # A pack stored again after a partial replay keeps its dead time: listed by it.
    (first,) = await store.select(instance, [LetterId(seqs[0], 1)])
    assert await store.purge([first]) == 1
    page, cursor = await store.page(
        "ws_1", instance, start=times[0], end=times[1], size=5, before=None
    )
    assert ids(page) == ["m-0-0"] and cursor is None
