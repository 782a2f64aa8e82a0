"""How many instances, sources and members a workspace may have, and live tokens a member.
Nothing bounded them: every router and executor holds each instance, and counts it in its
metrics, whose 2,000 series a metric one tenant's live instances filled (every other tenant's
counts then went to one overflow series, and 5,000 made the executor's /metrics 49 MB); every
router holds each source's write key (a tenant's script at the change rate made 72,000 an
hour); members and tokens had no bound but the change rate (each member is read at every call
it makes). Past `EVENTFN_REGISTRY_INSTANCES_PER_WORKSPACE` (`..._SOURCES_...`,
`..._MEMBERS_...`, `EVENTFN_REGISTRY_TOKENS_PER_MEMBER`), a creation is refused
(RESOURCE_EXHAUSTED, no retry hint: waiting changes nothing) and nothing is stored; a deleted
one (a revoked token) frees its place; another workspace's (member's) quota is its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from tests.registry.conftest import Registry, auth, make_source, running_registry
from tests.registry.test_flows import make_function

QUOTA = 3


async def fleet(registry: Registry, name: str) -> tuple[str, str, str, list[str]]:
    """A workspace with a function and QUOTA + 2 sources; return (workspace, owner token,
    function name, source names)."""
    workspace, owner = await registry.workspace(name)
    fn, first = await make_function(registry, owner)
    sources = [first] + [
        (await make_source(registry, owner, f"s{i}")).name for i in range(QUOTA + 1)
    ]
    return workspace, owner, fn, sources


def create(registry: Registry, owner: str, workspace: str, function: str, source: str):
    values = {"endpoint": "https://example.com/hook", "apiKey": "sk_1"}
    instance = res.Instance(function=function, source=source)
    instance.settings.update(values)
    return registry.stub.CreateInstance(
        pb.CreateInstanceRequest(parent=f"workspaces/{workspace}", instance=instance),
        metadata=auth(owner),
    )


async def test_a_workspace_has_its_quota_of_instances_and_no_more(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_instances_per_workspace=QUOTA
    ) as registry:
        workspace, owner, fn, sources = await fleet(registry, "Many")
        # Created at once: concurrent creations each checked the same count before.
        made = await asyncio.gather(
            *(create(registry, owner, workspace, fn, s) for s in sources), return_exceptions=True
        )
        refused = [m for m in made if isinstance(m, grpc.aio.AioRpcError)]
        kept = [m for m in made if not isinstance(m, BaseException)]
        assert len(kept) == QUOTA and len(refused) == 2, made
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "EVENTFN_REGISTRY_INSTANCES_PER_WORKSPACE" in (error.details() or "")
        listed = await registry.stub.ListInstances(
            pb.ListInstancesRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
        )
        assert len(listed.instances) == QUOTA
        # A deleted instance frees its place.
        await registry.stub.DeleteInstance(
            pb.DeleteInstanceRequest(name=kept[0].instance.name), metadata=auth(owner)
        )
        used = {i.source for i in listed.instances}
        free = [s for s in sources if s not in used]
        await create(registry, owner, workspace, fn, free[0])
        # A neighbour has its own.
        neighbour_ws, neighbour, neighbour_fn, neighbour_sources = await fleet(
            registry, "Neighbour"
        )
        await create(registry, neighbour, neighbour_ws, neighbour_fn, neighbour_sources[0])


async def test_a_workspace_has_its_quota_of_sources_and_no_more(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_sources_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Many")
        made = await asyncio.gather(
            *(make_source(registry, owner, f"s{i}") for i in range(QUOTA + 2)),
            return_exceptions=True,
        )
        refused = [m for m in made if isinstance(m, grpc.aio.AioRpcError)]
        kept = [m for m in made if not isinstance(m, BaseException)]
        assert len(kept) == QUOTA and len(refused) == 2, made
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "EVENTFN_REGISTRY_SOURCES_PER_WORKSPACE" in (error.details() or "")
        listed = await registry.stub.ListSources(
            pb.ListSourcesRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
        )
        assert len(listed.sources) == QUOTA
        await registry.stub.DeleteSource(
            pb.DeleteSourceRequest(name=kept[0].name), metadata=auth(owner)
        )
        await make_source(registry, owner, "again")
        _, neighbour = await registry.workspace("Neighbour")
        await make_source(registry, neighbour, "first")


async def test_a_workspace_has_its_quota_of_members_and_no_more(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_members_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Many")
        made = await asyncio.gather(  # the owner is one of them
            *(add_member(registry, owner, workspace, f"m{i}@example.com") for i in range(QUOTA)),
            return_exceptions=True,
        )
        refused = [m for m in made if isinstance(m, grpc.aio.AioRpcError)]
        kept = [m for m in made if not isinstance(m, BaseException)]
        assert len(kept) == QUOTA - 1 and len(refused) == 1, made
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EVENTFN_REGISTRY_MEMBERS_PER_WORKSPACE" in (refused[0].details() or "")
        await registry.stub.DeleteMember(
            pb.DeleteMemberRequest(name=kept[0].member.name), metadata=auth(owner)
        )
        await add_member(registry, owner, workspace, "again@example.com")
        neighbour_ws, neighbour = await registry.workspace("Neighbour")
        await add_member(registry, neighbour, neighbour_ws, "first@example.com")


def add_member(registry: Registry, owner: str, workspace: str, email: str):
    member = res.Member(email=email, roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)])
    return registry.stub.CreateMember(
        pb.CreateMemberRequest(parent=f"workspaces/{workspace}", member=member),
        metadata=auth(owner),
    )


async def test_a_member_holds_its_quota_of_live_tokens_and_no_more(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_tokens_per_member=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Many")  # the owner's token is one

        def mint(name: str):
            return registry.stub.CreateToken(
                pb.CreateTokenRequest(
                    parent=f"workspaces/{workspace}", token=res.Token(display_name=name)
                ),
                metadata=auth(owner),
            )

        made = await asyncio.gather(*(mint(f"t{i}") for i in range(QUOTA)), return_exceptions=True)
        refused = [m for m in made if isinstance(m, grpc.aio.AioRpcError)]
        kept = [m for m in made if not isinstance(m, BaseException)]
        assert len(kept) == QUOTA - 1 and len(refused) == 1, made
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "EVENTFN_REGISTRY_TOKENS_PER_MEMBER" in (refused[0].details() or "")
        # A revoked token frees its place; a member's quota is its own.
        await registry.stub.RevokeToken(
            pb.RevokeTokenRequest(name=kept[0].token.name), metadata=auth(owner)
        )
        await mint("again")
        other = await add_member(registry, owner, workspace, "other@example.com")
        await registry.stub.CreateToken(
            pb.CreateTokenRequest(
                parent=f"workspaces/{workspace}",
                token=res.Token(display_name="theirs", member=other.member.name),
            ),
            metadata=auth(owner),
        )
