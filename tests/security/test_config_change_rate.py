"""A member changing configuration in a loop: each change of a source, an instance or a
deployed function is applied by every router, executor and retrier (≈ 11 ms of CPU in all per
change, measured by an attacker's review), so `UpdateInstance` in a loop loaded every tenant's
data path; and every change leaves rows (an audit entry at least): tokens and members made and
deleted in a loop, 130 a second, grew the database without bound. Each workspace now has a
budget of changes (a burst, then a rate) every create, update and delete spends; past it a
change is refused with RESOURCE_EXHAUSTED and when to retry, and nothing is changed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from tests.registry.conftest import Registry, auth, make_source, running_registry, ws

BURST = 6
# Slow enough that no token comes back while a test spends its burst, however busy the host
# (at 5 a second, one did in a full test run).
PER_SECOND = 0.5
CODE = "async function onTrack(event) {}"


@pytest.fixture
async def budgeted(fresh_database: str, tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry allowing 6 changes at once per workspace, then one every 2 s."""
    async with running_registry(
        fresh_database,
        tmp_path,
        registry_changes_burst=BURST,
        registry_changes_per_second=PER_SECOND,
    ) as running:
        yield running


async def instance_of(registry: Registry, owner: str, ws_id: str) -> res.Instance:
    """Create a function, a source and an instance of them (three changes)."""
    fn = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=ws(ws_id), function=res.DestinationFunction(display_name="f"), code=CODE
        ),
        metadata=auth(owner),
    )
    src = await make_source(registry, owner, "s")
    made = await registry.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=ws(ws_id),
            instance=res.Instance(function=fn.function.name, source=src.name),
        ),
        metadata=auth(owner),
    )
    return made.instance


async def rename(registry: Registry, owner: str, ins: res.Instance, name: str) -> res.Instance:
    """Change an instance's display name (one change)."""
    done = await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(name=ins.name, display_name=name),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=auth(owner),
    )
    return done.instance


async def test_a_workspace_changing_config_in_a_loop_is_refused_and_nothing_changes(
    budgeted: Registry,
) -> None:
    ws_id, owner = await budgeted.workspace("Looping")
    other_id, other = await budgeted.workspace("Neighbour")
    ins = await instance_of(budgeted, owner, ws_id)
    for i in range(BURST - 3):  # the rest of the burst
        ins = await rename(budgeted, owner, ins, f"n{i}")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rename(budgeted, owner, ins, "one too many")
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "EVENTFN_REGISTRY_CHANGES_PER_SECOND" in (refused.value.details() or "")
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None
    delays = [
        error_details_pb2.RetryInfo.FromString(d.value).retry_delay.ToTimedelta()
        for d in status.details
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    ]
    assert len(delays) == 1 and 0 < delays[0].total_seconds() <= 1 / PER_SECOND
    now = await budgeted.stub.GetInstance(
        pb.GetInstanceRequest(name=ins.name), metadata=auth(owner)
    )
    assert now.instance.display_name == ins.display_name  # nothing was changed
    assert now.instance.etag == ins.etag
    # Another workspace's budget is its own.
    await instance_of(budgeted, other, other_id)
    # Told when, the caller's change goes through then.
    await asyncio.sleep(delays[0].total_seconds())
    assert (await rename(budgeted, owner, ins, "later")).display_name == "later"
    # A refused create keeps no answer for its request_id: sent again when told, it is made.
    create = pb.CreateSourceRequest(
        parent=ws(ws_id), source=res.Source(display_name="again"), request_id=str(uuid.uuid4())
    )
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await budgeted.stub.CreateSource(create, metadata=auth(owner))
    assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await asyncio.sleep(1 / PER_SECOND)
    made = await budgeted.stub.CreateSource(create, metadata=auth(owner))
    assert made.source.display_name == "again"


async def test_refused_calls_spend_nothing_of_the_workspace_budget(budgeted: Registry) -> None:
    """A read-only member looping on changes it may not make, or the owner's invalid calls,
    used to spend the budget before they were refused: the owner's next change (even an
    emergency rotation of a leaked write key) then got RESOURCE_EXHAUSTED."""
    ws_id, owner = await budgeted.workspace("Kept")
    ins = await instance_of(budgeted, owner, ws_id)  # three of the burst
    reader = await budgeted.member(  # two more
        owner, "ro@kept.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    for i in range(BURST * 3):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await rename(budgeted, reader, ins, f"r{i}")
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await budgeted.stub.UpdateInstance(
                pb.UpdateInstanceRequest(
                    instance=res.Instance(name=ins.name, batch_size=10**6),
                    update_mask=field_mask_pb2.FieldMask(paths=["batch_size"]),
                ),
                metadata=auth(owner),
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The last of the burst: an emergency rotation of a leaked write key.
    rotated = await budgeted.stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(name=ins.source), metadata=auth(owner)
    )
    assert rotated.source.write_key


async def test_tokens_minted_in_a_loop_spend_their_members_budget(budgeted: Registry) -> None:
    """Any member may make tokens for itself: counted on the workspace's budget, a read-only
    member minting them in a loop held up every owner's change; its own budget now."""
    ws_id, owner = await budgeted.workspace("Minting")
    source = await make_source(budgeted, owner, "web")
    reader = await budgeted.member(
        owner, "ro@minting.io", res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)
    )
    me = await budgeted.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(reader))
    tokens = []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        for i in range(BURST * 3):
            made = await budgeted.stub.CreateToken(
                pb.CreateTokenRequest(parent=ws(ws_id), token=res.Token(display_name=f"t{i}")),
                metadata=auth(reader),
            )
            tokens.append(made.token.name)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(tokens) == BURST and me.member.name.rsplit("/", 1)[1] in (
        refused.value.details() or ""
    )
    # The workspace's owner is not held up: a leaked write key is rotated at once.
    rotated = await budgeted.stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(name=source.name), metadata=auth(owner)
    )
    assert rotated.source.write_key != source.write_key
    # Access is taken away whatever was spent: tokens revoked, the member removed.
    for name in tokens:
        await budgeted.stub.RevokeToken(pb.RevokeTokenRequest(name=name), metadata=auth(owner))
    await budgeted.stub.DeleteMember(
        pb.DeleteMemberRequest(name=me.member.name), metadata=auth(owner)
    )


async def test_a_refused_change_gives_back_what_it_spent(budgeted: Registry) -> None:
    """A Save & Deploy is counted at its first instance: refused at a later one (its settings
    do not fit), it changed nothing and spends nothing."""
    ws_id, owner = await budgeted.workspace("Refunded")
    ins = await instance_of(budgeted, owner, ws_id)  # three of the burst
    second = await budgeted.stub.CreateInstance(  # a fourth
        pb.CreateInstanceRequest(
            parent=ws(ws_id),
            instance=res.Instance(function=ins.function, source=ins.source, display_name="2"),
        ),
        metadata=auth(owner),
    )
    region = struct_pb2.Struct()
    region.update({"region": "eu"})
    refused_save = pb.SaveFunctionRequest(
        name=ins.function,
        code=CODE,
        settings=[
            types_pb2.SettingDefinition(
                name="region", type=types_pb2.SETTING_TYPE_STRING, required=True
            )
        ],
        deploy_instances=[ins.name, second.instance.name],
        deploy_settings={ins.name: region},  # the second has none: refused there
    )
    for _ in range(BURST):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await budgeted.stub.SaveFunction(refused_save, metadata=auth(owner))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for i in range(BURST - 4):  # the rest of the burst, whole
        ins = await rename(budgeted, owner, ins, f"n{i}")


async def test_what_the_data_plane_does_not_read_is_not_sent_to_it(budgeted: Registry) -> None:
    """A function's description is the registry's alone: changing it re-sent every instance
    of the function to every data-plane process."""
    ws_id, owner = await budgeted.workspace("Described")
    ins = await instance_of(budgeted, owner, ws_id)
    before = await config_revision(budgeted)
    done = await budgeted.stub.UpdateFunction(
        pb.UpdateFunctionRequest(
            function=res.DestinationFunction(name=ins.function, description="a description"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=auth(owner),
    )
    assert done.function.description == "a description"
    assert await config_revision(budgeted) == before


async def config_revision(registry: Registry) -> int:
    conn = await asyncpg.connect(registry.database_url)
    try:
        return await conn.fetchval("SELECT revision FROM config_state WHERE id = 1")
    finally:
        await conn.close()
