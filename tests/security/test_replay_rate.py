"""How fast a workspace may start replays. Nothing bounded ReplayDeadLetters: each call scans
the instance's dead letters and leaves an operation kept a week (and its request id a day), so
one tenant calling it in a loop (1,500 in 22 s) loaded the shared retrier and grew its bucket
without end. A workspace now starts `EVENTFN_RETRIER_REPLAYS_BURST` at once, then
`EVENTFN_RETRIER_REPLAYS_PER_SECOND`: past that, RESOURCE_EXHAUSTED saying when to retry; its
neighbours' budgets are their own, and a retried request_id is answered without spending."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.retrier.v1 import retrier_pb2
from tests.registry.conftest import Registry, auth, registry
from tests.retrier.conftest import StartRetrier, start_retrier_on
from tests.security.test_control_plane_dead_letters import Tenant, bury, tenant

__all__ = ["registry", "start_retrier_on"]
BURST = 3


async def test_a_workspace_starts_its_burst_of_replays_then_waits_its_turn(
    registry: Registry, start_retrier_on: StartRetrier, nats_client: NatsClient
) -> None:
    running, stub = await start_retrier_on(
        retrier_replays_burst=BURST, retrier_replays_per_second=0.01
    )
    busy, neighbour = await tenant(registry, "Busy"), await tenant(registry, "Neighbour")
    await running.watcher.wait_until(
        lambda v: {busy.instance_id, neighbour.instance_id} <= set(v.instances)
    )
    await bury(nats_client, neighbour, "m-neighbour")

    def replay(who: Tenant, request_id: str = "") -> Any:
        return stub.ReplayDeadLetters(
            retrier_pb2.ReplayDeadLettersRequest(
                parent=who.instance,
                request_id=request_id,
                start_time={"seconds": 1},
                end_time={"seconds": 2},  # selects nothing: done at once
            ),
            metadata=auth(who.owner),
        )

    first = str(uuid.uuid4())
    await replay(busy, first)
    for _ in range(BURST - 1):
        await replay(busy)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await replay(busy)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EVENTFN_RETRIER_REPLAYS_BURST" in (refused.value.details() or "")
    assert "retry in" in (refused.value.details() or "")
    again = await replay(busy, first)  # a retry of a request answered: no budget spent
    assert again.name
    replayed = await replay(neighbour)  # the neighbour's budget is its own
    assert replayed.name


async def test_replays_refused_for_the_callers_mistake_spend_nothing(
    registry: Registry, start_retrier_on: StartRetrier
) -> None:
    # A script retrying letters already replayed (NOT_FOUND by design) spent the budget and
    # locked its workspace out of replays.
    running, stub = await start_retrier_on(
        retrier_replays_burst=BURST, retrier_replays_per_second=0.01
    )
    busy = await tenant(registry, "Busy")
    await running.watcher.wait_until(lambda v: busy.instance_id in v.instances)
    for _ in range(BURST + 2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ReplayDeadLetters(
                retrier_pb2.ReplayDeadLettersRequest(
                    parent=busy.instance, names=[busy.letter_name("999999999.0")]
                ),
                metadata=auth(busy.owner),
            )
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    replayed = await stub.ReplayDeadLetters(
        retrier_pb2.ReplayDeadLettersRequest(
            parent=busy.instance, start_time={"seconds": 1}, end_time={"seconds": 2}
        ),
        metadata=auth(busy.owner),
    )
    assert replayed.name
