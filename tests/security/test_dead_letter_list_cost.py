"""ListDeadLetters read every dead pack of the instance whatever the page size (forward from
the stream's start, one direct get per pack): a Functions Read-only member made the shared
retrier read 20,000 packs, 5 s, for each page of one letter. A page now walks back from the
newest pack and reads at most a budget of packs; past it, the page is short (even empty) and
its next_page_token goes on from where the walk stopped."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2
from services.common import streams
from services.retrier import dead_letters
from services.retrier.dead_letters import DeadLetterStore
from tests.registry.conftest import Registry, auth, registry
from tests.retrier.conftest import StartRetrier, start_retrier_on
from tests.security.test_control_plane_dead_letters import tenant

__all__ = ["registry", "start_retrier_on"]

PACKS = 1200
BUDGET = 500


async def test_a_page_of_one_letter_reads_one_pack_and_a_call_reads_a_budget(
    registry: Registry,
    start_retrier_on: StartRetrier,
    nats_client: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, stub = await start_retrier_on()
    attacker = await tenant(registry, "Attacker")
    await running.watcher.wait_until(lambda v: attacker.instance_id in set(v.instances))
    # What a function throwing for every event leaves: one DEAD pack per failed pack.
    js = nats_client.jetstream()
    subject = streams.dead_subject(attacker.workspace_id, attacker.instance_id)
    body = orjson.dumps([{"type": "track", "event": "x", "userId": "u", "messageId": "m"}])
    acks = [
        await js.publish_async(
            subject,
            body,
            headers={streams.MSG_ID: f"d-{uuid.uuid4().hex}", streams.DEAD_REASON: "failed"},
        )
        for _ in range(PACKS)
    ]
    stored = await asyncio.gather(*acks)
    first = await DeadLetterStore(nats_client, js).pack(stored[0].seq)
    assert first is not None
    reads = 0
    direct = DeadLetterStore._direct

    async def counted(self: DeadLetterStore, request: dict[str, object]) -> Any:
        nonlocal reads
        reads += 1
        return await direct(self, request)

    monkeypatch.setattr(DeadLetterStore, "_direct", counted)
    reader = await registry.member(
        attacker.owner, "reader@attacker.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    md = auth(reader)
    request = retrier_pb2.ListDeadLettersRequest(parent=attacker.instance, page_size=1)
    page = await stub.ListDeadLetters(request, metadata=md)
    assert len(page.dead_letters) == 1 and page.next_page_token
    assert reads <= 2, f"a page of one letter read {reads} packs"
    monkeypatch.setattr(dead_letters, "READ_BUDGET", BUDGET)
    # None died before the first pack: each call reads its budget, answers an empty page and
    # a token to go on; the last says the list is over.
    request = retrier_pb2.ListDeadLettersRequest(
        parent=attacker.instance, page_size=500, end_time=first.time
    )
    pages = []
    while True:
        reads = 0
        page = await stub.ListDeadLetters(request, metadata=md)
        assert reads <= BUDGET
        pages.append((len(page.dead_letters), bool(page.next_page_token)))
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert pages == [(0, True), (0, True), (0, False)]
