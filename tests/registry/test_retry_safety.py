"""Safe retries for integrators (issue 13, items 2-5): request_id on every create and save,
etags on every change and delete, keyset page tokens bound to their list, INVALID_ARGUMENT for
a missing required id, and the registry gate passing the registry's verdicts on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.errors import NotFound, Relayed, Unavailable
from services.common.registry_gate import RegistryGate
from tests.registry.conftest import BOOTSTRAP, HANDLER, SETTINGS, Registry, auth
from tests.registry.test_flows import expect, make_function, settings, table_counts, violations


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo detail")


async def lose_reply(call: Awaitable[Any]) -> None:
    """Make a call whose reply never reaches the client: the server did the work, the
    client saw only a broken connection and will retry."""
    await call


def rid() -> str:
    return str(uuid.uuid4())


# -- request_id (AIP-155) -----------------------------------------------------------------


async def test_every_create_and_save_retried_with_its_request_id_gives_the_same_resource(
    registry: Registry,
) -> None:
    stub = registry.stub
    request = pb.CreateWorkspaceRequest(name="Retries", request_id=rid())
    await lose_reply(stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP)))
    ws = await stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP))
    again = await stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP))
    assert again == ws  # the same workspace and the same owner token, shown again
    owner = ws.token
    md = auth(owner)
    before = await table_counts(registry.database_url)

    calls: list[tuple[Callable[..., Any], Any]] = [
        (stub.CreateSource, pb.CreateSourceRequest(name="web", request_id=rid())),
        (
            stub.CreateFunction,
            pb.CreateFunctionRequest(
                name="Hook", code=HANDLER, settings=SETTINGS, request_id=rid()
            ),
        ),
        (
            stub.CreateMember,
            pb.CreateMemberRequest(
                email="dev@example.com",
                roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)],
                request_id=rid(),
            ),
        ),
        (stub.CreateToken, pb.CreateTokenRequest(name="ci", request_id=rid())),
    ]
    first = []
    for method, request in calls:
        await lose_reply(method(request, metadata=md))
        first.append(await method(request, metadata=md))
        assert await method(request, metadata=md) == first[-1]
    source, function, _member, token = first
    assert token.secret.startswith("efn_")  # the same secret, still usable
    await stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token.secret))

    rotate = pb.RotateWriteKeyRequest(source_id=source.source.id, request_id=rid())
    await lose_reply(stub.RotateWriteKey(rotate, metadata=md))
    rotated = await stub.RotateWriteKey(rotate, metadata=md)
    current = await stub.GetSource(pb.GetSourceRequest(source_id=source.source.id), metadata=md)
    assert rotated.source.write_key == current.source.write_key != source.source.write_key

    save = pb.SaveFunctionRequest(
        function_id=function.function.id, code=HANDLER + "//2", settings=SETTINGS, request_id=rid()
    )
    await lose_reply(stub.SaveFunction(save, metadata=md))
    saved = await stub.SaveFunction(save, metadata=md)
    assert saved.version.number == 2
    versions = await stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(function_id=function.function.id), metadata=md
    )
    assert [v.number for v in versions.versions] == [2, 1]

    create = pb.CreateInstanceRequest(
        function_id=function.function.id,
        source_id=source.source.id,
        settings=settings(endpoint="https://example.com", apiKey="k"),
        request_id=rid(),
    )
    await lose_reply(stub.CreateInstance(create, metadata=md))
    instance = await stub.CreateInstance(create, metadata=md)
    assert (await stub.CreateInstance(create, metadata=md)) == instance

    after = await table_counts(registry.database_url)
    assert after["source"] == before["source"] + 1
    assert after["function"] == before["function"] + 1
    assert after["function_version"] == before["function_version"] + 2
    assert after["member"] == before["member"] + 1
    assert after["token"] == before["token"] + 1
    assert after["instance"] == before["instance"] + 1


async def test_concurrent_twins_with_one_request_id_make_one_resource(registry: Registry) -> None:
    _, owner = await registry.workspace("Twins")
    request = pb.CreateSourceRequest(name="twin", request_id=rid())
    results = await asyncio.gather(
        *(registry.stub.CreateSource(request, metadata=auth(owner)) for _ in range(4))
    )
    assert len({r.source.id for r in results}) == 1
    listed = await registry.stub.ListSources(pb.ListSourcesRequest(), metadata=auth(owner))
    assert [s.name for s in listed.sources] == ["twin"]


async def test_a_request_id_reused_for_another_request_or_not_a_uuid_is_refused(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Reuse")
    same = rid()
    await registry.stub.CreateSource(
        pb.CreateSourceRequest(name="a", request_id=same), metadata=auth(owner)
    )
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateSource(
            pb.CreateSourceRequest(name="b", request_id=same), metadata=auth(owner)
        ),
    )
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert [f for f, _ in violations(error)] == ["request_id"]
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateSource(
            pb.CreateSourceRequest(name="c", request_id="retry-1"), metadata=auth(owner)
        ),
    )
    assert [f for f, _ in violations(error)] == ["request_id"]
    listed = await registry.stub.ListSources(pb.ListSourcesRequest(), metadata=auth(owner))
    assert [s.name for s in listed.sources] == ["a"]
    # The same request_id in another workspace is another request.
    _, other = await registry.workspace("Reuse 2")
    made = await registry.stub.CreateSource(
        pb.CreateSourceRequest(name="b", request_id=same), metadata=auth(other)
    )
    assert made.source.name == "b"


async def test_a_taken_derived_instance_name_names_the_existing_instance(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Taken")
    fn_id, src_id = await make_function(registry, owner)
    values = settings(endpoint="https://example.com", apiKey="k")
    first = await registry.stub.CreateInstance(
        pb.CreateInstanceRequest(function_id=fn_id, source_id=src_id, settings=values),
        metadata=auth(owner),
    )
    error = await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateInstance(
            pb.CreateInstanceRequest(function_id=fn_id, source_id=src_id, settings=values),
            metadata=auth(owner),
        ),
    )
    assert first.instance.id in (error.details() or "")
    assert "no name was sent" in (error.details() or "")
    assert error_info(error).metadata["existing_instance_id"] == first.instance.id


# -- etags (AIP-154) ----------------------------------------------------------------------


async def stale(call: Awaitable[Any], current: str) -> None:
    error = await expect(grpc.StatusCode.ABORTED, call)
    info = error_info(error)
    assert info.reason == "ETAG_MISMATCH"
    assert info.metadata["current_etag"] == current
    assert current in (error.details() or "")


async def test_stale_etags_are_refused_naming_the_current_etag_and_change_nothing(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Etags")
    md = auth(owner)
    stub = registry.stub
    fn_id, src_id = await make_function(registry, owner)
    fn = (await stub.GetFunction(pb.GetFunctionRequest(function_id=fn_id), metadata=md)).function

    # Two saves based on the same version: the second is refused.
    first = await stub.SaveFunction(
        pb.SaveFunctionRequest(function_id=fn_id, code=HANDLER, settings=SETTINGS, etag=fn.etag),
        metadata=md,
    )
    assert first.function.etag != fn.etag
    await stale(
        stub.SaveFunction(
            pb.SaveFunctionRequest(
                function_id=fn_id, code=HANDLER + "//b", settings=SETTINGS, etag=fn.etag
            ),
            metadata=md,
        ),
        first.function.etag,
    )
    await stale(
        stub.DeleteFunction(pb.DeleteFunctionRequest(function_id=fn_id, etag=fn.etag), metadata=md),
        first.function.etag,
    )

    src = (await stub.GetSource(pb.GetSourceRequest(source_id=src_id), metadata=md)).source
    rotated = await stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(source_id=src_id, etag=src.etag), metadata=md
    )
    await stale(
        stub.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=src_id, etag=src.etag), metadata=md),
        rotated.source.etag,
    )
    await stale(
        stub.DeleteSource(pb.DeleteSourceRequest(source_id=src_id, etag=src.etag), metadata=md),
        rotated.source.etag,
    )

    ins = (
        await stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id,
                source_id=src_id,
                settings=settings(endpoint="https://example.com", apiKey="k"),
            ),
            metadata=md,
        )
    ).instance
    updated = await stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(id=ins.id, enabled=False, etag=ins.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ),
        metadata=md,
    )
    await stale(
        stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(id=ins.id, name="lost update", etag=ins.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=md,
        ),
        updated.instance.etag,
    )
    await stale(
        stub.DeployInstance(
            pb.DeployInstanceRequest(
                instance_id=ins.id, version_id=first.version.id, etag=ins.etag
            ),
            metadata=md,
        ),
        updated.instance.etag,
    )
    await stale(
        stub.DeleteInstance(
            pb.DeleteInstanceRequest(instance_id=ins.id, etag=ins.etag), metadata=md
        ),
        updated.instance.etag,
    )

    member = (
        await stub.CreateMember(
            pb.CreateMemberRequest(
                email="ro@example.com", roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)]
            ),
            metadata=md,
        )
    ).member
    changed = await stub.UpdateMemberRoles(
        pb.UpdateMemberRolesRequest(
            member_id=member.id,
            roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN)],
            etag=member.etag,
        ),
        metadata=md,
    )
    await stale(
        stub.UpdateMemberRoles(
            pb.UpdateMemberRolesRequest(
                member_id=member.id,
                roles=[res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)],
                etag=member.etag,
            ),
            metadata=md,
        ),
        changed.member.etag,
    )
    await stale(
        stub.DeleteMember(
            pb.DeleteMemberRequest(member_id=member.id, etag=member.etag), metadata=md
        ),
        changed.member.etag,
    )

    # Nothing the refused calls asked for happened.
    now = await stub.GetInstance(pb.GetInstanceRequest(instance_id=ins.id), metadata=md)
    assert now.instance == updated.instance
    got = await stub.GetFunction(pb.GetFunctionRequest(function_id=fn_id), metadata=md)
    assert got.function.latest_version_number == 2
    assert (await stub.GetSource(pb.GetSourceRequest(source_id=src_id), metadata=md)).source == (
        rotated.source
    )
    members = await stub.ListMembers(pb.ListMembersRequest(), metadata=md)
    assert [m for m in members.members if m.id == member.id] == [changed.member]
    # With the current etag the change goes through.
    await stub.DeleteInstance(
        pb.DeleteInstanceRequest(instance_id=ins.id, etag=updated.instance.etag), metadata=md
    )


# -- keyset pages (AIP-158) ---------------------------------------------------------------


async def walk(call: Callable[..., Any], request: Any, field: str, md: Any, between=None) -> list:
    """Read every page, running `between` after each page but the last."""
    items, token = [], ""
    while True:
        request.page_token = token
        page = await call(request, metadata=md)
        items += list(getattr(page, field))
        token = page.next_page_token
        if not token:
            return items
        if between is not None:
            await between()


async def test_writes_between_pages_neither_repeat_nor_skip_an_item(registry: Registry) -> None:
    _, owner = await registry.workspace("Keyset")
    md = auth(owner)
    for i in range(5):
        await registry.stub.CreateSource(pb.CreateSourceRequest(name=f"s{i}"), metadata=md)
    audit_before = await walk(
        registry.stub.ListAuditEvents, pb.ListAuditEventsRequest(page_size=100), "events", md
    )
    written = []

    async def write() -> None:
        made = await registry.stub.CreateSource(
            pb.CreateSourceRequest(name=f"new{len(written)}"), metadata=md
        )
        written.append(made.source.id)

    # Newest first: each write adds an event in front of the list while it is read.
    events = await walk(
        registry.stub.ListAuditEvents, pb.ListAuditEventsRequest(page_size=2), "events", md, write
    )
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), "an event came on two pages"
    assert {e.id for e in audit_before} <= set(ids)
    assert ids == sorted(ids, reverse=True)

    # Oldest first, with a delete between pages too: no repeats, nothing that stayed skipped.
    first_ids = [
        s.id for s in await walk(registry.stub.ListSources, pb.ListSourcesRequest(), "sources", md)
    ]
    deleted: list[str] = []

    async def write_and_delete() -> None:
        await write()
        victim = first_ids[len(deleted)]
        await registry.stub.DeleteSource(pb.DeleteSourceRequest(source_id=victim), metadata=md)
        deleted.append(victim)

    seen = [
        s.id
        for s in await walk(
            registry.stub.ListSources,
            pb.ListSourcesRequest(page_size=2),
            "sources",
            md,
            write_and_delete,
        )
    ]
    assert len(seen) == len(set(seen))
    survivors = [i for i in first_ids if i not in deleted]
    assert set(survivors) <= set(seen)


async def test_page_tokens_are_bound_to_their_list_filters_and_workspace(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Tokens")
    md = auth(owner)
    fn_id, _ = await make_function(registry, owner, "A")
    await make_function(registry, owner, "B")
    await make_function(registry, owner, "C")
    sources = await registry.stub.ListSources(pb.ListSourcesRequest(page_size=1), metadata=md)
    token = sources.next_page_token
    assert token
    for call in (
        registry.stub.ListFunctions(pb.ListFunctionsRequest(page_token=token), metadata=md),
        registry.stub.ListMembers(pb.ListMembersRequest(page_token=token), metadata=md),
        registry.stub.ListInstances(
            pb.ListInstancesRequest(page_token=token, function_id=fn_id), metadata=md
        ),
    ):
        error = await expect(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert violations(error)[0][0] == "page_token"
        assert "another list" in violations(error)[0][1]
    # Forged: an offset, a token with a changed body, random text.
    body, _, signature = token.partition(".")
    forged = [
        "bzoxMDA=",  # base64 of "o:100", the old offset tokens
        body[:-2] + "AA." + signature,
        "garbage!",
    ]
    for bad in forged:
        error = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.stub.ListSources(pb.ListSourcesRequest(page_token=bad), metadata=md),
        )
        assert violations(error)[0][0] == "page_token"
    # Other filters than the first page's.
    instances_token = (
        await registry.stub.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1), metadata=md)
    ).next_page_token
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(page_token=instances_token, resource_id=fn_id), metadata=md
        ),
    )
    assert "other filters" in violations(error)[0][1]
    # Another workspace's token.
    _, other = await registry.workspace("Tokens 2")
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListSources(pb.ListSourcesRequest(page_token=token), metadata=auth(other)),
    )
    assert violations(error)[0][0] == "page_token"


# -- missing required ids, grants naming nothing --------------------------------------------


REQUIRED = [
    ("GetWorkspace", pb.GetWorkspaceRequest(), "workspace_id"),
    ("UpdateMemberRoles", pb.UpdateMemberRolesRequest(roles=[res.RoleGrant(role=1)]), "member_id"),
    ("DeleteMember", pb.DeleteMemberRequest(), "member_id"),
    ("RevokeToken", pb.RevokeTokenRequest(), "token_id"),
    ("GetSource", pb.GetSourceRequest(), "source_id"),
    ("RotateWriteKey", pb.RotateWriteKeyRequest(), "source_id"),
    ("DeleteSource", pb.DeleteSourceRequest(), "source_id"),
    ("GetFunction", pb.GetFunctionRequest(), "function_id"),
    ("SaveFunction", pb.SaveFunctionRequest(code=HANDLER), "function_id"),
    ("DeleteFunction", pb.DeleteFunctionRequest(), "function_id"),
    ("ListFunctionVersions", pb.ListFunctionVersionsRequest(), "function_id"),
    ("GetFunctionVersion", pb.GetFunctionVersionRequest(), "version_id"),
    ("CreateInstance", pb.CreateInstanceRequest(source_id="src_x"), "function_id"),
    ("CreateInstance", pb.CreateInstanceRequest(function_id="fn_x"), "source_id"),
    ("GetInstance", pb.GetInstanceRequest(), "instance_id"),
    (
        "UpdateInstance",
        pb.UpdateInstanceRequest(update_mask=field_mask_pb2.FieldMask(paths=["enabled"])),
        "instance.id",
    ),
    ("DeployInstance", pb.DeployInstanceRequest(version_id="ver_x"), "instance_id"),
    ("DeployInstance", pb.DeployInstanceRequest(instance_id="ins_x"), "version_id"),
    ("DeleteInstance", pb.DeleteInstanceRequest(), "instance_id"),
]


@pytest.mark.parametrize(("method", "request_", "field"), REQUIRED)
async def test_a_missing_required_id_is_invalid_argument_naming_it(
    registry: Registry, method: str, request_: Any, field: str
) -> None:
    _, owner = await registry.workspace(f"Req {method} {field}")
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        getattr(registry.stub, method)(request_, metadata=auth(owner)),
    )
    assert (field, "required") in violations(error)


async def test_role_grants_naming_missing_functions_or_sources_are_refused(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Grants")
    fn_id, src_id = await make_function(registry, owner)
    _, other = await registry.workspace("Grants 2")
    foreign_fn, _ = await make_function(registry, other)
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateMember(
            pb.CreateMemberRequest(
                email="x@example.com",
                roles=[
                    res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, function_ids=[fn_id, "fn_nope"]),
                    res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, function_ids=[foreign_fn]),
                    res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, source_ids=["src_nope"]),
                    res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER, source_ids=[src_id]),
                ],
            ),
            metadata=auth(owner),
        ),
    )
    fields = [f for f, _ in violations(error)]
    assert fields == ["roles[3].source_ids"]  # the shape first
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateMember(
            pb.CreateMemberRequest(
                email="x@example.com",
                roles=[
                    res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, function_ids=[fn_id, "fn_nope"]),
                    res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, function_ids=[foreign_fn]),
                    res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, source_ids=["src_nope"]),
                ],
            ),
            metadata=auth(owner),
        ),
    )
    assert [f for f, _ in violations(error)] == [
        "roles[0].function_ids[1]",
        "roles[1].function_ids[0]",
        "roles[2].source_ids[0]",
    ]
    members = await registry.stub.ListMembers(pb.ListMembersRequest(), metadata=auth(owner))
    assert all(m.email != "x@example.com" for m in members.members)


# -- the data plane's registry gate -------------------------------------------------------


class CallContext:
    """The part of a servicer context the gate reads: the caller's metadata."""

    def __init__(self, token: str) -> None:
        self._metadata = auth(token)

    def invocation_metadata(self) -> Any:
        return self._metadata


async def test_registry_gate_passes_client_errors_on_and_only_outages_as_unavailable(
    registry: Registry,
) -> None:
    _, owner = await registry.workspace("Gate")
    gate = RegistryGate(f"127.0.0.1:{registry.port}")
    try:
        with pytest.raises(Relayed) as bad:  # the registry's verdict, with its violations
            await gate.instance(CallContext(owner), "")  # type: ignore[arg-type]
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad.value.violations] == ["instance_id"]
        with pytest.raises(NotFound):
            await gate.instance(CallContext(owner), "ins_missing")  # type: ignore[arg-type]
    finally:
        await gate.close()
    down = RegistryGate("127.0.0.1:9")  # nothing listens there
    try:
        with pytest.raises(Unavailable):
            await down.instance(CallContext(owner), "ins_x")  # type: ignore[arg-type]
    finally:
        await down.close()
