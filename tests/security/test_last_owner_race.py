"""A workspace always keeps an owner. UpdateMember and DeleteMember counted the owners left over
rows they did not lock: two owners demoting each other at once each counted the other, both
changes were made, and nothing in the API could give the workspace an owner again (the bootstrap
administrator acts in its own workspace only). Such changes now wait for each other."""

from __future__ import annotations

import asyncio

import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, registry

__all__ = ["registry"]

OWNER = res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)
READER = res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)


async def test_two_owners_demoting_each_other_at_once_leave_one(registry: Registry) -> None:
    for attempt in range(10):  # the race was lost about one time in two
        ws_id, first = await registry.workspace(f"Owners {attempt}")
        second = await registry.member(first, f"b{attempt}@example.com", OWNER)
        listed = await registry.stub.ListMembers(
            pb.ListMembersRequest(parent=f"workspaces/{ws_id}"), metadata=auth(first)
        )

        async def demote(member: res.Member, token: str) -> grpc.StatusCode:
            try:
                await registry.stub.UpdateMember(
                    pb.UpdateMemberRequest(
                        member=res.Member(name=member.name, etag=member.etag, roles=[READER]),
                        update_mask={"paths": ["roles"]},
                    ),
                    metadata=auth(token),
                )
            except grpc.aio.AioRpcError as refused:
                return refused.code()
            return grpc.StatusCode.OK

        a, b = listed.members
        ended = await asyncio.gather(demote(a, second), demote(b, first))
        assert ended.count(grpc.StatusCode.OK) == 1, ended  # the other: no owner, or no right
        owners = 0
        for token in (first, second):
            me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))
            owners += any(g.role == res.ROLE_WORKSPACE_OWNER for g in me.member.roles)
        assert owners == 1
