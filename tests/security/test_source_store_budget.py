"""What a write key alone may make the router store. An event is stored once per instance its
source feeds, and a source may feed 1,000 instances: one 500 KB batch stored 500 MB, and a
client sending them as fast as the router answered filled the stream's disk, which every
tenant shares, with nothing to slow it but the router's CPU. A source's requests now spend a
budget of stored bytes (`EVENTFN_ROUTER_SOURCE_BYTES_BURST`, then `..._PER_SECOND`): over it a
request is refused with the seconds to wait (HTTP 429 and Retry-After, gRPC RESOURCE_EXHAUSTED
with RetryInfo), nothing of it is stored, and other sources' requests go on, those of its own
workspace too (a budget of the workspace's let an anonymous client holding a browser source's
public key stop the workspace's server-side sources)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
import httpx
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.router.v1 import router_pb2 as rpb
from eventfn_api.router.v1 import router_pb2_grpc
from services.common import streams
from services.router.app import RunningRouter, start_router
from tests.registry.conftest import Registry, auth, registry
from tests.registry.test_flows import make_function
from tests.router.test_service import basic, events_of, router_settings, stored

__all__ = ["registry"]

FAN_OUT = 8
BUDGET = 1_000_000  # bytes at once, and a second
PAD = "x" * 2000


@dataclass
class Feed:
    workspace_id: str
    write_key: str
    instances: list[str]


async def feed(
    registry: Registry, workspace_id: str, owner: str, name: str, instances: int
) -> Feed:
    """A source of the workspace feeding `instances` instances of one function."""
    function, source = await make_function(registry, owner, name)
    made = []
    for i in range(instances):
        instance = res.Instance(function=function, source=source, display_name=f"{name} {i}")
        instance.settings.update({"endpoint": "https://example.com/hook", "apiKey": "k"})
        created = await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(parent=f"workspaces/{workspace_id}", instance=instance),
            metadata=auth(owner),
        )
        made.append(created.instance.name.rsplit("/", 1)[-1])
    got = await registry.stub.GetSource(pb.GetSourceRequest(name=source), metadata=auth(owner))
    return Feed(workspace_id, got.source.write_key, made)


def batch(tag: str) -> bytes:
    """About 210 KB: 100 events of 2 KB."""
    events = [
        {"type": "track", "userId": "u", "event": "E", "messageId": f"{tag}-{i}", "p": PAD}
        for i in range(100)
    ]
    return orjson.dumps({"batch": events})


@pytest.fixture
async def router(registry: Registry, nats_url: str) -> AsyncIterator[RunningRouter]:
    settings = router_settings(nats_url, f"127.0.0.1:{registry.port}").model_copy(
        update={
            "router_source_bytes_per_second": BUDGET,
            "router_source_bytes_burst": BUDGET,
        }
    )
    async with AsyncExitStack() as stack:
        yield await start_router(settings, stack)


async def kept(nc: NatsClient, who: Feed) -> list[int]:
    """How many events the stream holds for each of a source's instances."""
    return [
        len(events_of(await stored(nc, streams.events_subject(who.workspace_id, instance))))
        for instance in who.instances
    ]


async def test_a_source_storing_past_its_budget_is_told_to_wait_and_other_sources_are_not(
    registry: Registry, router: RunningRouter, nats_client: NatsClient
) -> None:
    workspace_id, owner = await registry.workspace("Flood")
    flood = await feed(registry, workspace_id, owner, "Web", FAN_OUT)  # a browser's public key
    calm = await feed(registry, workspace_id, owner, "Backend", 1)
    await router.watcher.wait_until(
        lambda v: all(i in v.instances for i in [*flood.instances, *calm.instances])
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{router.http_port}", timeout=10
    ) as http:
        # More than the budget holds (≈ 1.7 MB stored): taken whole, as the budget was full.
        first = await http.post("/v1/batch", content=batch("a"), headers=basic(flood.write_key))
        assert first.status_code == 200, first.text
        refused = await http.post("/v1/batch", content=batch("b"), headers=basic(flood.write_key))
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        answer = refused.json()
        assert answer["code"] == "too_many_requests"
        assert "EVENTFN_ROUTER_SOURCE_BYTES_PER_SECOND" in answer["message"]
        assert flood.workspace_id not in answer["message"]  # a write key does not tell it
        assert await kept(nats_client, flood) == [100] * FAN_OUT  # nothing of the refused one

        neighbour = await http.post("/v1/batch", content=batch("c"), headers=basic(calm.write_key))
        assert neighbour.status_code == 200, neighbour.text
        assert await kept(nats_client, calm) == [100]

    events = orjson.loads(batch("b"))["batch"]
    request = rpb.IngestRequest(write_key=flood.write_key, events_json=orjson.dumps(events))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{router.grpc_port}") as channel:
        stub = router_pb2_grpc.RouterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as exhausted:
            await stub.Ingest(request)
        assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(exhausted.value)  # type: ignore[arg-type]
        assert status is not None
        [delay] = [
            error_details_pb2.RetryInfo.FromString(d.value).retry_delay.ToTimedelta()
            for d in status.details
            if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
        ]
        assert 0 < delay.total_seconds() <= 2 * 1.7  # what is owed, at the rate
        await asyncio.sleep(delay.total_seconds())  # a budget refills with time only
        answer = await stub.Ingest(request)  # told when, and then taken
    assert answer.accepted == 100
    assert await kept(nats_client, flood) == [200] * FAN_OUT


async def routed_feed(registry: Registry, router: RunningRouter, workspace: str) -> Feed:
    """A new workspace's source feeding FAN_OUT instances, once the router routes to them."""
    workspace_id, owner = await registry.workspace(workspace)
    fed = await feed(registry, workspace_id, owner, "Web", FAN_OUT)
    await router.watcher.wait_until(lambda v: all(i in v.instances for i in fed.instances))
    return fed


async def test_a_request_over_the_budget_is_refused_before_it_is_routed(
    registry: Registry, router: RunningRouter
) -> None:
    # Routing was done first: with events naming destinations, a 9 KB request fanned out to
    # 1,000 instances cost the router seconds, and a refused one cost the same.
    flood = await routed_feed(registry, router, "Routed")
    stats = router.ingestor.stats
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{router.http_port}", timeout=10
    ) as http:
        first = await http.post("/v1/batch", content=batch("a"), headers=basic(flood.write_key))
        assert first.status_code == 200, first.text
        events = [
            {"type": "track", "userId": "u", "event": "E", "messageId": "n-1", "p": PAD},
            {"type": "track", "userId": "u", "event": "E", "messageId": "n-2"}
            | {"integrations": {"All": False}},  # turned away by every instance, if routed
        ]
        turned_away = stats.dropped_by_integrations
        refused = await http.post(
            "/v1/batch", content=orjson.dumps({"batch": events}), headers=basic(flood.write_key)
        )
        assert refused.status_code == 429, refused.text
        assert stats.dropped_by_integrations == turned_away


async def test_a_request_pays_what_it_stores_not_what_it_might(
    registry: Registry, router: RunningRouter
) -> None:
    # Half of each batch's events are turned away by every instance: ≈ 0.8 MB stored of a
    # 1.7 MB bound. Paying the bound first refused the second batch though the budget held
    # what it stored; a source that owes nothing is served, and then owes.
    shop = await routed_feed(registry, router, "Addressed")

    def addressed(tag: str) -> bytes:
        events = orjson.loads(batch(tag))["batch"]
        for event in events[::2]:
            event["integrations"] = {"All": False}
        return orjson.dumps({"batch": events})

    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{router.http_port}", timeout=10
    ) as http:
        for tag, status in (("a", 200), ("b", 200), ("c", 429)):
            sent = await http.post(
                "/v1/batch", content=addressed(tag), headers=basic(shop.write_key)
            )
            assert sent.status_code == status, (tag, sent.text)
