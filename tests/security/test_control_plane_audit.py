"""Issue 10, item 11: audit entries cannot be forged. RecordInstanceAction is the data plane's
own call (service token only); members, owners included, get PERMISSION_DENIED and nothing is
written. Replays and purges through the retrier are still audited, with the real actor.
"""

from __future__ import annotations

import uuid

import grpc
import orjson
import pytest
from google.protobuf import struct_pb2
from nats.aio.client import Client as NatsClient

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.retrier.v1 import retrier_pb2
from services.common import streams
from tests.registry.conftest import HANDLER, SERVICE, SETTINGS, Registry, auth, registry
from tests.retrier.conftest import StartRetrier, public_id, start_retrier_on

__all__ = ["registry", "start_retrier_on"]


def details(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def workspace(r: Registry, name: str) -> tuple[str, str, str, str]:
    """Create a workspace with an instance; return (workspace id, owner token, source name,
    instance name)."""
    ws, owner = await r.workspace(f"{name} {uuid.uuid4().hex[:6]}")
    md = auth(owner)
    parent = f"workspaces/{ws}"
    fn = await r.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=parent,
            function=res.DestinationFunction(display_name="Hook"),
            code=HANDLER,
            settings=SETTINGS,
        ),
        metadata=md,
    )
    src = await r.stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name="web")), metadata=md
    )
    values = struct_pb2.Struct()
    values.update({"endpoint": "https://example.com/hook", "apiKey": "sk_1"})
    ins = await r.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=parent,
            instance=res.Instance(
                function=fn.function.name, source=src.source.name, settings=values
            ),
        ),
        metadata=md,
    )
    return ws, owner, src.source.name, ins.instance.name


async def member_name(r: Registry, token: str) -> str:
    return (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))).member.name


DATA_PLANE = {res.AUDIT_ACTION_DEAD_LETTERS_REPLAY, res.AUDIT_ACTION_DEAD_LETTERS_PURGE}


async def data_plane_entries(r: Registry, owner: str, instance: str) -> list[res.AuditEvent]:
    listed = await r.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent=instance.split("/instances/")[0], resource=instance, page_size=500
        ),
        metadata=auth(owner),
    )
    return [e for e in listed.events if e.action in DATA_PLANE]


async def status_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


REPLAY = res.AUDIT_ACTION_DEAD_LETTERS_REPLAY
PURGE = res.AUDIT_ACTION_DEAD_LETTERS_PURGE


async def test_no_member_can_write_an_audit_entry(registry: Registry) -> None:
    _, owner, source, instance = await workspace(registry, "Forgers")
    admin = await registry.member(
        owner, "admin@forgers.io", res.RoleGrant(role=res.ROLE_SOURCE_ADMIN)
    )
    admin_of_source = await registry.member(
        owner, "s@forgers.io", res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[source])
    )
    owner_name = await member_name(registry, owner)
    forged = details(replayed=999, dead_letters="all")
    for token in (owner, admin, admin_of_source):
        for actor in ("", owner_name):  # with or without naming someone to blame
            request = pb.RecordInstanceActionRequest(
                instance=instance, action=REPLAY, details=forged, actor=actor
            )
            got = await status_of(registry.stub.RecordInstanceAction(request, metadata=auth(token)))
            assert got == grpc.StatusCode.PERMISSION_DENIED
    anonymous = pb.RecordInstanceActionRequest(instance=instance, action=PURGE)
    assert (
        await status_of(registry.stub.RecordInstanceAction(anonymous))
        == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await data_plane_entries(registry, owner, instance) == []


async def test_the_service_token_cannot_blame_another_workspaces_member(
    registry: Registry,
) -> None:
    ws, owner, _, instance = await workspace(registry, "Target")
    _, stranger, _, _ = await workspace(registry, "Stranger")
    stranger_name = await member_name(registry, stranger)
    owner_name = await member_name(registry, owner)
    cases = {
        stranger_name: grpc.StatusCode.INVALID_ARGUMENT,  # not a member of that workspace
        "": grpc.StatusCode.INVALID_ARGUMENT,  # nobody: every entry names its actor
        f"workspaces/{ws}/members/mem_" + "0" * 20: grpc.StatusCode.NOT_FOUND,
    }
    for actor, want in cases.items():
        request = pb.RecordInstanceActionRequest(instance=instance, action=REPLAY, actor=actor)
        got = await status_of(registry.stub.RecordInstanceAction(request, metadata=auth(SERVICE)))
        assert got == want, actor
    bad_action = pb.RecordInstanceActionRequest(
        instance=instance, action=res.AUDIT_ACTION_FUNCTION_SAVE, actor=owner_name
    )
    assert (
        await status_of(registry.stub.RecordInstanceAction(bad_action, metadata=auth(SERVICE)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await data_plane_entries(registry, owner, instance) == []
    request = pb.RecordInstanceActionRequest(
        instance=instance,
        action=PURGE,
        actor=owner_name,
        details=details(purged=1),
        request_id=str(uuid.uuid4()),
    )
    recorded = await registry.stub.RecordInstanceAction(request, metadata=auth(SERVICE))
    again = await registry.stub.RecordInstanceAction(request, metadata=auth(SERVICE))
    assert again == recorded, "a retried record (same request_id) is written once"
    (entry,) = await data_plane_entries(registry, owner, instance)
    assert entry.name == recorded.event.name and entry.actor == owner_name


@pytest.mark.parametrize("action", ["replay", "purge"])
async def test_replays_and_purges_are_audited_with_the_real_actor(
    registry: Registry,
    start_retrier_on: StartRetrier,
    nats_client: NatsClient,
    action: str,
) -> None:
    running, retrier = await start_retrier_on()
    ws, owner, source, instance = await workspace(registry, "Audited")
    instance_id = instance.rsplit("/", 1)[-1]
    await running.watcher.wait_until(lambda v: instance_id in v.instances)
    admin = await registry.member(
        owner, "ops@audited.io", res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[source])
    )
    ack = await nats_client.jetstream().publish(
        streams.dead_subject(ws, instance_id),
        orjson.dumps([{"type": "track", "event": "x", "messageId": "m-audit"}]),
        headers={streams.MSG_ID: f"dead-{uuid.uuid4().hex}", streams.DEAD_REASON: "test"},
    )
    md = auth(admin)
    if action == "replay":
        count = await retrier.replay(
            retrier_pb2.ReplayDeadLettersRequest(parent=instance), metadata=md
        )
    else:
        gone = await retrier.PurgeDeadLetters(
            retrier_pb2.PurgeDeadLettersRequest(
                parent=instance, names=[f"{instance}/deadLetters/{public_id(str(ack.seq))}"]
            ),
            metadata=md,
        )
        count = gone.purged
    assert count == 1
    (entry,) = await data_plane_entries(registry, owner, instance)
    assert entry.action == (REPLAY if action == "replay" else PURGE)
    assert entry.actor == await member_name(registry, admin)
    assert entry.actor_email == "ops@audited.io"
    assert entry.details["replayed" if action == "replay" else "purged"] == 1
