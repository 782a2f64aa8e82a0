"""A request_id is its caller's (AIP-155 retries): another member who learns it must not get
the first call's response. Before, a Functions Read-Only member replaying the owner's
CreateToken request_id received the owner's new token secret (an owner's token), and one
replaying RotateWriteKey's received the new write key, though they may do neither.
"""

from __future__ import annotations

import uuid

import grpc
from google.protobuf import field_mask_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, registry, ws
from tests.registry.test_flows import expect

__all__ = ["registry"]


async def read_only(registry: Registry, owner: str) -> str:
    """A member of the owner's workspace who may only read functions; their token."""
    return await registry.member(
        owner,
        f"ro-{uuid.uuid4().hex[:6]}@example.com",
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY),
    )


async def test_another_member_replaying_a_create_token_request_id_gets_no_secret(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Replay tokens")
    reader = await read_only(registry, owner)
    request = pb.CreateTokenRequest(
        parent=ws(ws_id), token=res.Token(display_name="ci"), request_id=str(uuid.uuid4())
    )
    first = await registry.stub.CreateToken(request, metadata=auth(owner))
    # The owner's own retry answers the first response, as before.
    again = await registry.stub.CreateToken(request, metadata=auth(owner))
    assert again.secret == first.secret

    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, registry.stub.CreateToken(request, metadata=auth(reader))
    )
    assert first.secret not in str(error.details())
    assert "request_id" in str(error.details())
    # No token was made for the reader either: the replay changed nothing.
    listed = await registry.stub.ListTokens(
        pb.ListTokensRequest(parent=ws(ws_id)), metadata=auth(owner)
    )
    assert [t.display_name for t in listed.tokens].count("ci") == 1


async def test_another_member_replaying_a_rotation_request_id_gets_no_write_key(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Replay rotations")
    reader = await read_only(registry, owner)
    source = (
        await registry.stub.CreateSource(
            pb.CreateSourceRequest(parent=ws(ws_id), source=res.Source(display_name="web")),
            metadata=auth(owner),
        )
    ).source
    request = pb.RotateWriteKeyRequest(
        name=source.name, etag=source.etag, request_id=str(uuid.uuid4())
    )
    rotated = await registry.stub.RotateWriteKey(request, metadata=auth(owner))
    assert rotated.source.write_key != source.write_key

    error = await expect(
        grpc.StatusCode.PERMISSION_DENIED,  # before the request_id is looked up
        registry.stub.RotateWriteKey(request, metadata=auth(reader)),
    )
    assert rotated.source.write_key not in str(error.details())


async def test_a_member_whose_role_was_taken_replays_no_rotation(registry: Registry) -> None:
    """A retry answered the first response before the caller's roles were checked: a Source
    Admin demoted since got the rotated write key back by replaying their own request_id."""
    ws_id, owner = await registry.workspace("Demoted")
    admin = await registry.member(owner, "sa@demoted.io", res.RoleGrant(role=res.ROLE_SOURCE_ADMIN))
    source = (
        await registry.stub.CreateSource(
            pb.CreateSourceRequest(parent=ws(ws_id), source=res.Source(display_name="web")),
            metadata=auth(owner),
        )
    ).source
    request = pb.RotateWriteKeyRequest(name=source.name, request_id=str(uuid.uuid4()))
    rotated = await registry.stub.RotateWriteKey(request, metadata=auth(admin))
    me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(admin))
    await registry.stub.UpdateMember(
        pb.UpdateMemberRequest(
            member=res.Member(
                name=me.member.name, roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["roles"]),
        ),
        metadata=auth(owner),
    )
    error = await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        registry.stub.RotateWriteKey(request, metadata=auth(admin)),
    )
    assert rotated.source.write_key not in str(error.details())


async def test_a_request_id_from_another_owner_is_another_request(registry: Registry) -> None:
    """Two members who may both make the call: the second's request with the first's
    request_id is refused as a different request, not answered with the first's source."""
    ws_id, owner = await registry.workspace("Replay sources")
    other = await registry.member(
        owner, "second-owner@example.com", res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)
    )
    request = pb.CreateSourceRequest(
        parent=ws(ws_id), source=res.Source(display_name="web"), request_id=str(uuid.uuid4())
    )
    await registry.stub.CreateSource(request, metadata=auth(owner))
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, registry.stub.CreateSource(request, metadata=auth(other))
    )
    assert "request_id" in str(error.details())
