"""Who may look at stored packs. `eventfn events tail` read NATS with the deployment's one
account, so whoever was given its URL to tail could read every workspace's packs, store forged
ones (run with the victim's decrypted settings) and purge the streams; the workspace and role
checks were the CLI's own. The executor's TailEvents reads them for the caller now: its
workspace only, only instances it may read, a bounded number of calls at once."""

from __future__ import annotations

import asyncio

import grpc
import orjson
import pytest
from nats.aio.client import Client as NatsClient

from eventfn_api.executor.v1 import executor_pb2 as pb
from eventfn_api.executor.v1 import executor_pb2_grpc
from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import streams
from services.executor import tail as tail_module
from services.executor.tail import TAILS_PER_MEMBER, TAILS_PER_WORKSPACE
from tests.cli.test_events_tail import publish, workspace_with_instance
from tests.eventually import eventually
from tests.pipeline.conftest import Platform, platform
from tests.registry.conftest import Registry, auth, registry
from tests.registry.test_flows import make_function, new_instance, settings

__all__ = ["platform", "registry"]


async def shown(
    stub: executor_pb2_grpc.ExecutorStub, token: str, **fields: object
) -> list[pb.TailEventsResponse]:
    """The packs a tail (without follow) shows the token's holder."""
    return [p async for p in stub.TailEvents(pb.TailEventsRequest(**fields), metadata=auth(token))]


def ids(packs: list[pb.TailEventsResponse]) -> list[str]:
    return [event["messageId"] for p in packs for event in orjson.loads(p.events_json)]


async def test_a_tail_shows_its_callers_readable_instances_and_nothing_else(
    registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    ws, owner, mine = await workspace_with_instance(registry, "Tailed")
    other_ws, _, theirs = await workspace_with_instance(registry, "Neighbour")
    # A second function and instance in the same workspace, and a member reading only it.
    function, source = await make_function(registry, owner, "Second")
    second = await registry.stub.CreateInstance(
        new_instance(
            f"workspaces/{ws}", function, source, settings=settings(endpoint="x", apiKey="k")
        ),
        metadata=auth(owner),
    )
    second_id = second.instance.name.rsplit("/", 1)[-1]
    reader = await registry.member(
        owner,
        "reader@example.com",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[function]),
    )
    first = await publish(nats_client, ws, mine, "first function")
    other = await publish(nats_client, ws, second_id, "second function")
    foreign = await publish(nats_client, other_ws, theirs, "another workspace")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        everything = ids(await shown(stub, owner, parent=f"workspaces/{ws}", last=10))
        assert everything == [first, other]
        assert ids(await shown(stub, reader, parent=f"workspaces/{ws}", last=10)) == [other]
        for token, fields, code in [
            (owner, {"parent": f"workspaces/{other_ws}"}, grpc.StatusCode.NOT_FOUND),
            (
                owner,
                {
                    "parent": f"workspaces/{ws}",
                    "instance": f"workspaces/{other_ws}/instances/{theirs}",
                },
                grpc.StatusCode.NOT_FOUND,
            ),
            (
                reader,
                {"parent": f"workspaces/{ws}", "instance": f"workspaces/{ws}/instances/{mine}"},
                grpc.StatusCode.PERMISSION_DENIED,
            ),
            ("efn_not-a-token", {"parent": f"workspaces/{ws}"}, grpc.StatusCode.UNAUTHENTICATED),
            (owner, {"parent": f"workspaces/{ws}", "last": 1001}, grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await shown(stub, token, **{"last": 10, **fields})
            assert refused.value.code() == code, (fields, refused.value.details())
    assert foreign not in everything


async def test_a_workspace_and_each_member_hold_a_bounded_number_of_tails_open(
    registry: Registry, platform: Platform
) -> None:
    ws, owner, _ = await workspace_with_instance(registry, "Many tails")
    # A member who may read nothing of it, but for a function of its own making.
    function, _ = await make_function(registry, owner, "Narrow")
    narrow = await registry.member(
        owner,
        "narrow@example.com",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[function]),
    )
    request = pb.TailEventsRequest(parent=f"workspaces/{ws}", follow=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)

        async def refused(token: str) -> str:
            call = stub.TailEvents(request, metadata=auth(token))
            try:  # an open call would time out here
                assert await asyncio.wait_for(call.code(), 10) == grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                call.cancel()
            return await call.details() or ""

        calls = [stub.TailEvents(request, metadata=auth(narrow)) for _ in range(TAILS_PER_MEMBER)]
        try:
            # Each is open once its consumer is made (its initial metadata has come).
            await asyncio.gather(*(call.initial_metadata() for call in calls))
            assert "most a member may" in await refused(narrow)
            more = TAILS_PER_WORKSPACE - TAILS_PER_MEMBER  # the owner still has room
            calls += [stub.TailEvents(request, metadata=auth(owner)) for _ in range(more)]
            await asyncio.gather(*(call.initial_metadata() for call in calls))
            assert "calls open on this executor, the most it may" in await refused(owner)
            _, neighbour, _ = await workspace_with_instance(registry, "Its own tails")
            other = await workspace_of(registry, neighbour)
            call = stub.TailEvents(
                pb.TailEventsRequest(parent=other, follow=True), metadata=auth(neighbour)
            )
            await call.initial_metadata()
            call.cancel()
        finally:
            for call in calls:
                call.cancel()


async def workspace_of(registry: Registry, token: str) -> str:
    return (await registry.stub.WhoAmI(rpb.WhoAmIRequest(), metadata=auth(token))).workspace.name


async def test_a_tail_starts_exactly_its_last_packs_back_in_order(
    registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    ws, owner, instance = await workspace_with_instance(registry, "Long tail")
    stored = [await publish(nats_client, ws, instance, f"e{i}") for i in range(250)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        for last in (1, 120, 250, 1000):
            packs = await shown(stub, owner, parent=f"workspaces/{ws}", last=last)
            assert ids(packs) == stored[-last:], last  # skipped by their headers, in order
            times = [p.store_time.ToNanoseconds() for p in packs]
            assert times == sorted(times)
        assert await shown(stub, owner, parent=f"workspaces/{ws}", last=0) == []


async def test_an_open_tail_ends_once_its_token_is_revoked(
    registry: Registry,
    nats_client: NatsClient,
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follow call has no end of its own: checked once, it went on streaming every new pack
    to a member whose token was revoked and who was removed."""
    monkeypatch.setattr(tail_module, "RECHECK_SECONDS", 0.0)  # at every pack, not every 30 s
    ws, owner, instance = await workspace_with_instance(registry, "Revoked tail")
    reader = await registry.member(
        owner, "leaving@example.com", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    request = pb.TailEventsRequest(parent=f"workspaces/{ws}", follow=True)
    async with (
        asyncio.timeout(60),
        grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel,
    ):
        call = executor_pb2_grpc.ExecutorStub(channel).TailEvents(request, metadata=auth(reader))
        await call.initial_metadata()  # its start is fixed: what is stored now is sent
        before = await publish(nats_client, ws, instance, "before")
        assert ids([await call.read()]) == [before]
        me = await registry.stub.WhoAmI(rpb.WhoAmIRequest(), metadata=auth(reader))
        await registry.stub.DeleteMember(
            rpb.DeleteMemberRequest(name=me.member.name), metadata=auth(owner)
        )
        await publish(nats_client, ws, instance, "after")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_workspace_starts_tails_within_its_budget(
    registry: Registry, platform: Platform
) -> None:
    """Each start counts the stream with short-lived consumers: started in a loop, tails loaded
    NATS's API for every tenant."""
    ws, owner, _ = await workspace_with_instance(registry, "Tail loop")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        request = {"parent": f"workspaces/{ws}", "last": 1}
        for _ in range(20):  # the burst
            await shown(stub, owner, **request)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await shown(stub, owner, **request)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EVENTFN_EXECUTOR_TAILS_PER_SECOND" in (refused.value.details() or "")


async def test_a_tail_leaves_no_consumer_or_subscription_behind(
    registry: Registry, nats_client: NatsClient, platform: Platform
) -> None:
    """A call ended as its start was fixed left its consumer for JetStream's idle timeout and
    its subscription in the executor for good; one whose consumer JetStream dropped (a caller
    not reading) left the subscription too."""
    js, executor_nats = nats_client.jetstream(), platform.executor.nats
    ws, owner, instance = await workspace_with_instance(registry, "Leaky tail")
    await publish(nats_client, ws, instance, "stored")

    async def tails() -> set[str]:
        found = await js.consumers_info(streams.EVENTS_STREAM)
        return {c.name for c in found if c.config.filter_subject == f"events.{ws}.*"}

    subscriptions = len(executor_nats._subs)
    request = pb.TailEventsRequest(parent=f"workspaces/{ws}", last=1, follow=True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.executor.port}") as channel:
        stub = executor_pb2_grpc.ExecutorStub(channel)
        for _ in range(3):
            call = stub.TailEvents(request, metadata=auth(owner))
            await call.initial_metadata()
            call.cancel()
        await eventually(tails, "the cancelled tails' consumers deleted", until=lambda c: not c)
        await eventually(
            lambda: len(executor_nats._subs),
            "the executor's subscriptions back to what they were",
            until=subscriptions.__eq__,
        )

        call = stub.TailEvents(request, metadata=auth(owner))
        await call.read()
        for name in await tails():  # as JetStream does after its idle timeout
            await js.delete_consumer(streams.EVENTS_STREAM, name)
        await publish(nats_client, ws, instance, "after")
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        await eventually(
            lambda: len(executor_nats._subs),
            "the executor's subscriptions back to what they were",
            until=subscriptions.__eq__,
        )
