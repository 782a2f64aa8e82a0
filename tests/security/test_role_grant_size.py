"""How large a member's roles may be. Nothing bounded them but gRPC's 16 MiB: an owner gave a
member 100,000 grants (0.4 MB), or one grant naming a function 100,000 times, and the member's
roles were read from JSON at every call it made: each call held the registry's loop 0.9 s, and
a neighbour's `WhoAmI` waited 2.4 s instead of 9 ms. A role is granted at most once now, a
grant names each function or source once and at most 1,000 of them; anything more is refused
(INVALID_ARGUMENT naming the field) and nothing is stored."""

from __future__ import annotations

import grpc
import pytest

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, registry
from tests.registry.test_flows import make_function, parent_of, violations

__all__ = ["registry"]


async def _refused(
    registry: Registry, owner: str, parent: str, *grants: res.RoleGrant
) -> list[tuple[str, str]]:
    """Create a member with these roles, which must be refused; return the fields named, with
    what is wrong with each."""
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await registry.stub.CreateMember(
            pb.CreateMemberRequest(
                parent=parent, member=res.Member(email="big@example.com", roles=list(grants))
            ),
            metadata=auth(owner),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return violations(refused.value)


async def test_a_members_roles_are_bounded_and_each_named_once(registry: Registry) -> None:
    _, owner = await registry.workspace("Roles")
    parent = await parent_of(registry, owner)
    function, _ = await make_function(registry, owner)
    admin = res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[function])

    # (Under the 200,000 values a request may hold at all: those are refused before this.)
    many = [res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)] * 10_000
    [(field, why)] = await _refused(registry, owner, parent, *many)
    assert field == "member.roles" and "each role at most once" in why
    [(field, why)] = await _refused(registry, owner, parent, admin, admin)
    assert field == "member.roles[1].role" and "granted twice" in why
    repeated = res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[function] * 10_000)
    [(field, why)] = await _refused(registry, owner, parent, repeated)
    assert field == "member.roles[0]" and "at most 1,000" in why
    twice = res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[function] * 2)
    [(field, why)] = await _refused(registry, owner, parent, twice)
    assert field == "member.roles[0].functions[1]" and "again" in why

    listed = await registry.stub.ListMembers(
        pb.ListMembersRequest(parent=parent), metadata=auth(owner)
    )
    assert [m.email for m in listed.members if m.email == "big@example.com"] == []
    # Every role once, each naming what it covers: still a member.
    token = await registry.member(
        owner,
        "dev@example.com",
        admin,
        res.RoleGrant(role=res.ROLE_SOURCE_ADMIN),
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY),
        res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER),
    )
    me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))
    assert len(me.member.roles) == 4
