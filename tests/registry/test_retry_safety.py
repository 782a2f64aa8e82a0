"""Safe retries for integrators (issue 13, items 2-5): request_id on every create and save,
etags on every change and delete, keyset page tokens bound to their list, INVALID_ARGUMENT for
a missing required name, and the registry gate passing the registry's verdicts on."""

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
from tests.registry.conftest import BOOTSTRAP, HANDLER, SETTINGS, Registry, auth, ws
from tests.registry.test_flows import (
    expect,
    make_function,
    new_function,
    new_instance,
    settings,
    table_counts,
    violations,
)


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


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# -- request_id (AIP-155) -----------------------------------------------------------------


async def test_every_create_and_save_retried_with_its_request_id_gives_the_same_resource(
    registry: Registry,
) -> None:
    stub = registry.stub
    request = pb.CreateWorkspaceRequest(
        workspace=res.Workspace(display_name="Retries"), request_id=rid()
    )
    await lose_reply(stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP)))
    made = await stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP))
    again = await stub.CreateWorkspace(request, metadata=auth(BOOTSTRAP))
    assert again == made  # the same workspace and the same owner token, shown again
    owner = made.token
    parent = made.workspace.name
    md = auth(owner)
    before = await table_counts(registry.database_url)

    calls: list[tuple[Callable[..., Any], Any]] = [
        (
            stub.CreateSource,
            pb.CreateSourceRequest(
                parent=parent, source=res.Source(display_name="web"), request_id=rid()
            ),
        ),
        (stub.CreateFunction, new_function(parent, "Hook", settings=SETTINGS, request_id=rid())),
        (
            stub.CreateMember,
            pb.CreateMemberRequest(
                parent=parent,
                member=res.Member(
                    email="dev@example.com",
                    roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)],
                ),
                request_id=rid(),
            ),
        ),
        (
            stub.CreateToken,
            pb.CreateTokenRequest(
                parent=parent, token=res.Token(display_name="ci"), request_id=rid()
            ),
        ),
    ]
    first = []
    for method, request in calls:
        await lose_reply(method(request, metadata=md))
        first.append(await method(request, metadata=md))
        assert await method(request, metadata=md) == first[-1]
    source, function, _member, token = first
    assert token.secret.startswith("efn_")  # the same secret, still usable
    await stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token.secret))

    rotate = pb.RotateWriteKeyRequest(name=source.source.name, request_id=rid())
    await lose_reply(stub.RotateWriteKey(rotate, metadata=md))
    rotated = await stub.RotateWriteKey(rotate, metadata=md)
    current = await stub.GetSource(pb.GetSourceRequest(name=source.source.name), metadata=md)
    assert rotated.source.write_key == current.source.write_key != source.source.write_key

    save = pb.SaveFunctionRequest(
        name=function.function.name, code=HANDLER + "//2", settings=SETTINGS, request_id=rid()
    )
    await lose_reply(stub.SaveFunction(save, metadata=md))
    saved = await stub.SaveFunction(save, metadata=md)
    assert saved.version.number == 2
    versions = await stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(parent=function.function.name), metadata=md
    )
    assert [v.number for v in versions.versions] == [2, 1]

    create = new_instance(
        parent,
        function.function.name,
        source.source.name,
        settings=settings(endpoint="https://example.com", apiKey="k"),
    )
    create.request_id = rid()
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
    ws_id, owner = await registry.workspace("Twins")
    request = pb.CreateSourceRequest(
        parent=ws(ws_id), source=res.Source(display_name="twin"), request_id=rid()
    )
    results = await asyncio.gather(
        *(registry.stub.CreateSource(request, metadata=auth(owner)) for _ in range(4))
    )
    assert len({r.source.name for r in results}) == 1
    listed = await registry.stub.ListSources(
        pb.ListSourcesRequest(parent=ws(ws_id)), metadata=auth(owner)
    )
    assert [s.display_name for s in listed.sources] == ["twin"]


async def test_a_request_id_reused_for_another_request_or_not_a_uuid_is_refused(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Reuse")
    same = rid()

    def source(parent: str, name: str, request_id: str) -> pb.CreateSourceRequest:
        return pb.CreateSourceRequest(
            parent=parent, source=res.Source(display_name=name), request_id=request_id
        )

    await registry.stub.CreateSource(source(ws(ws_id), "a", same), metadata=auth(owner))
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateSource(source(ws(ws_id), "b", same), metadata=auth(owner)),
    )
    assert error_info(error).reason == "REQUEST_ID_REUSED"
    assert [f for f, _ in violations(error)] == ["request_id"]
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateSource(source(ws(ws_id), "c", "retry-1"), metadata=auth(owner)),
    )
    assert [f for f, _ in violations(error)] == ["request_id"]
    listed = await registry.stub.ListSources(
        pb.ListSourcesRequest(parent=ws(ws_id)), metadata=auth(owner)
    )
    assert [s.display_name for s in listed.sources] == ["a"]
    # The same request_id in another workspace is another request.
    other_id, other = await registry.workspace("Reuse 2")
    made = await registry.stub.CreateSource(source(ws(other_id), "b", same), metadata=auth(other))
    assert made.source.display_name == "b"


async def test_a_taken_derived_instance_name_names_the_existing_instance(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Taken")
    fn, src = await make_function(registry, owner)
    values = settings(endpoint="https://example.com", apiKey="k")
    first = await registry.stub.CreateInstance(
        new_instance(ws(ws_id), fn, src, settings=values), metadata=auth(owner)
    )
    error = await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateInstance(
            new_instance(ws(ws_id), fn, src, settings=values), metadata=auth(owner)
        ),
    )
    assert first.instance.name in (error.details() or "")
    assert "no display_name was sent" in (error.details() or "")
    assert error_info(error).metadata["existing_instance"] == first.instance.name


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
    ws_id, owner = await registry.workspace("Etags")
    parent = ws(ws_id)
    md = auth(owner)
    stub = registry.stub
    fn_name, src_name = await make_function(registry, owner)
    fn = (await stub.GetFunction(pb.GetFunctionRequest(name=fn_name), metadata=md)).function

    # Two saves based on the same version: the second is refused.
    first = await stub.SaveFunction(
        pb.SaveFunctionRequest(name=fn_name, code=HANDLER, settings=SETTINGS, etag=fn.etag),
        metadata=md,
    )
    assert first.function.etag != fn.etag
    await stale(
        stub.SaveFunction(
            pb.SaveFunctionRequest(
                name=fn_name, code=HANDLER + "//b", settings=SETTINGS, etag=fn.etag
            ),
            metadata=md,
        ),
        first.function.etag,
    )
    await stale(
        stub.UpdateFunction(
            pb.UpdateFunctionRequest(
                function=res.DestinationFunction(name=fn_name, description="x", etag=fn.etag),
                update_mask=mask("description"),
            ),
            metadata=md,
        ),
        first.function.etag,
    )
    await stale(
        stub.DeleteFunction(pb.DeleteFunctionRequest(name=fn_name, etag=fn.etag), metadata=md),
        first.function.etag,
    )

    src = (await stub.GetSource(pb.GetSourceRequest(name=src_name), metadata=md)).source
    rotated = await stub.RotateWriteKey(
        pb.RotateWriteKeyRequest(name=src_name, etag=src.etag), metadata=md
    )
    await stale(
        stub.RotateWriteKey(pb.RotateWriteKeyRequest(name=src_name, etag=src.etag), metadata=md),
        rotated.source.etag,
    )
    await stale(
        stub.UpdateSource(
            pb.UpdateSourceRequest(
                source=res.Source(name=src_name, display_name="lost rename", etag=src.etag),
                update_mask=mask("display_name"),
            ),
            metadata=md,
        ),
        rotated.source.etag,
    )
    await stale(
        stub.DeleteSource(pb.DeleteSourceRequest(name=src_name, etag=src.etag), metadata=md),
        rotated.source.etag,
    )

    values = settings(endpoint="https://example.com", apiKey="k")
    ins = (
        await stub.CreateInstance(
            new_instance(parent, fn_name, src_name, settings=values), metadata=md
        )
    ).instance
    updated = await stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(name=ins.name, state=res.Instance.STATE_DISABLED, etag=ins.etag),
            update_mask=mask("state"),
        ),
        metadata=md,
    )
    await stale(
        stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(name=ins.name, display_name="lost update", etag=ins.etag),
                update_mask=mask("display_name"),
            ),
            metadata=md,
        ),
        updated.instance.etag,
    )
    await stale(
        stub.DeployInstance(
            pb.DeployInstanceRequest(name=ins.name, version=first.version.name, etag=ins.etag),
            metadata=md,
        ),
        updated.instance.etag,
    )
    await stale(
        stub.DeleteInstance(pb.DeleteInstanceRequest(name=ins.name, etag=ins.etag), metadata=md),
        updated.instance.etag,
    )

    member = (
        await stub.CreateMember(
            pb.CreateMemberRequest(
                parent=parent,
                member=res.Member(
                    email="ro@example.com",
                    roles=[res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY)],
                ),
            ),
            metadata=md,
        )
    ).member

    def roles(role: int, etag: str) -> pb.UpdateMemberRequest:
        return pb.UpdateMemberRequest(
            member=res.Member(name=member.name, roles=[res.RoleGrant(role=role)], etag=etag),  # type: ignore[arg-type]
            update_mask=mask("roles"),
        )

    changed = await stub.UpdateMember(roles(res.ROLE_FUNCTIONS_ADMIN, member.etag), metadata=md)
    await stale(
        stub.UpdateMember(roles(res.ROLE_WORKSPACE_OWNER, member.etag), metadata=md),
        changed.member.etag,
    )
    await stale(
        stub.DeleteMember(pb.DeleteMemberRequest(name=member.name, etag=member.etag), metadata=md),
        changed.member.etag,
    )

    # Nothing the refused calls asked for happened.
    now = await stub.GetInstance(pb.GetInstanceRequest(name=ins.name), metadata=md)
    assert now.instance == updated.instance
    got = await stub.GetFunction(pb.GetFunctionRequest(name=fn_name), metadata=md)
    assert got.function.latest_version_number == 2 and got.function.description == ""
    got_source = await stub.GetSource(pb.GetSourceRequest(name=src_name), metadata=md)
    assert got_source.source == rotated.source
    got_member = await stub.GetMember(pb.GetMemberRequest(name=member.name), metadata=md)
    assert got_member.member == changed.member
    # With the current etag the change goes through.
    await stub.DeleteInstance(
        pb.DeleteInstanceRequest(name=ins.name, etag=updated.instance.etag), metadata=md
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
    ws_id, owner = await registry.workspace("Keyset")
    parent = ws(ws_id)
    md = auth(owner)

    def source(name: str) -> pb.CreateSourceRequest:
        return pb.CreateSourceRequest(parent=parent, source=res.Source(display_name=name))

    for i in range(5):
        await registry.stub.CreateSource(source(f"s{i}"), metadata=md)
    audit_before = await walk(
        registry.stub.ListAuditEvents,
        pb.ListAuditEventsRequest(parent=parent, page_size=100),
        "events",
        md,
    )
    written = []

    async def write() -> None:
        made = await registry.stub.CreateSource(source(f"new{len(written)}"), metadata=md)
        written.append(made.source.name)

    # Newest first: each write adds an event in front of the list while it is read.
    events = await walk(
        registry.stub.ListAuditEvents,
        pb.ListAuditEventsRequest(parent=parent, page_size=2),
        "events",
        md,
        write,
    )
    ids = [e.name for e in events]
    assert len(ids) == len(set(ids)), "an event came on two pages"
    assert {e.name for e in audit_before} <= set(ids)
    times = [e.create_time.ToDatetime() for e in events]
    assert times == sorted(times, reverse=True)

    # Oldest first, with a delete between pages too: no repeats, nothing that stayed skipped.
    first_names = [
        s.name
        for s in await walk(
            registry.stub.ListSources, pb.ListSourcesRequest(parent=parent), "sources", md
        )
    ]
    deleted: list[str] = []

    async def write_and_delete() -> None:
        await write()
        victim = first_names[len(deleted)]
        await registry.stub.DeleteSource(pb.DeleteSourceRequest(name=victim), metadata=md)
        deleted.append(victim)

    seen = [
        s.name
        for s in await walk(
            registry.stub.ListSources,
            pb.ListSourcesRequest(parent=parent, page_size=2),
            "sources",
            md,
            write_and_delete,
        )
    ]
    assert len(seen) == len(set(seen))
    survivors = [n for n in first_names if n not in deleted]
    assert set(survivors) <= set(seen)


async def test_page_tokens_are_bound_to_their_list_filters_and_workspace(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Tokens")
    parent = ws(ws_id)
    md = auth(owner)
    fn, _ = await make_function(registry, owner, "A")
    await make_function(registry, owner, "B")
    await make_function(registry, owner, "C")
    sources = await registry.stub.ListSources(
        pb.ListSourcesRequest(parent=parent, page_size=1), metadata=md
    )
    token = sources.next_page_token
    assert token
    for call in (
        registry.stub.ListFunctions(
            pb.ListFunctionsRequest(parent=parent, page_token=token), metadata=md
        ),
        registry.stub.ListMembers(
            pb.ListMembersRequest(parent=parent, page_token=token), metadata=md
        ),
        registry.stub.ListInstances(
            pb.ListInstancesRequest(parent=parent, page_token=token, function=fn), metadata=md
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
            registry.stub.ListSources(
                pb.ListSourcesRequest(parent=parent, page_token=bad), metadata=md
            ),
        )
        assert violations(error)[0][0] == "page_token"
    # Other filters than the first page's.
    audit_token = (
        await registry.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=parent, page_size=1), metadata=md
        )
    ).next_page_token
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=parent, page_token=audit_token, resource=fn),
            metadata=md,
        ),
    )
    assert "other filters" in violations(error)[0][1]
    # Another workspace's token.
    other_id, other = await registry.workspace("Tokens 2")
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListSources(
            pb.ListSourcesRequest(parent=ws(other_id), page_token=token), metadata=auth(other)
        ),
    )
    assert violations(error)[0][0] == "page_token"


# -- missing required names, grants naming nothing ------------------------------------------


P = "workspaces/ws_x"
REQUIRED = [
    ("GetWorkspace", pb.GetWorkspaceRequest(), "name"),
    ("GetMember", pb.GetMemberRequest(), "name"),
    (
        "UpdateMember",
        pb.UpdateMemberRequest(
            member=res.Member(roles=[res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER)]),
            update_mask=mask("roles"),
        ),
        "member.name",
    ),
    ("DeleteMember", pb.DeleteMemberRequest(), "name"),
    ("GetToken", pb.GetTokenRequest(), "name"),
    ("RevokeToken", pb.RevokeTokenRequest(), "name"),
    ("CreateSource", pb.CreateSourceRequest(source=res.Source(display_name="s")), "parent"),
    ("GetSource", pb.GetSourceRequest(), "name"),
    ("ListSources", pb.ListSourcesRequest(), "parent"),
    (
        "UpdateSource",
        pb.UpdateSourceRequest(
            source=res.Source(display_name="s"), update_mask=mask("display_name")
        ),
        "source.name",
    ),
    ("RotateWriteKey", pb.RotateWriteKeyRequest(), "name"),
    ("DeleteSource", pb.DeleteSourceRequest(), "name"),
    ("GetFunction", pb.GetFunctionRequest(), "name"),
    ("ListFunctions", pb.ListFunctionsRequest(), "parent"),
    (
        "UpdateFunction",
        pb.UpdateFunctionRequest(
            function=res.DestinationFunction(description="d"), update_mask=mask("description")
        ),
        "function.name",
    ),
    ("SaveFunction", pb.SaveFunctionRequest(code=HANDLER), "name"),
    ("DeleteFunction", pb.DeleteFunctionRequest(), "name"),
    ("ListFunctionVersions", pb.ListFunctionVersionsRequest(), "parent"),
    ("GetFunctionVersion", pb.GetFunctionVersionRequest(), "name"),
    ("CreateInstance", pb.CreateInstanceRequest(instance=res.Instance()), "instance.function"),
    ("GetInstance", pb.GetInstanceRequest(), "name"),
    ("ListInstances", pb.ListInstancesRequest(), "parent"),
    ("UpdateInstance", pb.UpdateInstanceRequest(update_mask=mask("batch_size")), "instance.name"),
    ("DeployInstance", pb.DeployInstanceRequest(), "name"),
    ("DeleteInstance", pb.DeleteInstanceRequest(), "name"),
    ("ListAuditEvents", pb.ListAuditEventsRequest(), "parent"),
]


@pytest.mark.parametrize(("method", "request_", "field"), REQUIRED)
async def test_a_missing_required_name_is_invalid_argument_naming_it(
    registry: Registry, method: str, request_: Any, field: str
) -> None:
    ws_id, owner = await registry.workspace(f"Req {method} {field}")
    request = type(request_)()
    request.CopyFrom(request_)
    if "parent" in request.DESCRIPTOR.fields_by_name and field != "parent":
        request.parent = ws(ws_id)
    error = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        getattr(registry.stub, method)(request, metadata=auth(owner)),
    )
    assert [f for f, _ in violations(error)] == [field]
    assert violations(error)[0][1].startswith("required")


async def test_more_required_names_of_creates_and_deploys(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Req more")
    fn, src = await make_function(registry, owner)
    for call, field in (
        (new_instance(ws(ws_id), fn, ""), "instance.source"),
        (pb.DeployInstanceRequest(name=f"{ws(ws_id)}/instances/ins_x"), "version"),
    ):
        method = (
            registry.stub.CreateInstance
            if isinstance(call, pb.CreateInstanceRequest)
            else registry.stub.DeployInstance
        )
        error = await expect(grpc.StatusCode.INVALID_ARGUMENT, method(call, metadata=auth(owner)))
        assert [f for f, _ in violations(error)] == [field]
    del src


async def test_role_grants_naming_missing_functions_or_sources_are_refused(
    registry: Registry,
) -> None:
    ws_id, owner = await registry.workspace("Grants")
    parent = ws(ws_id)
    fn, src = await make_function(registry, owner)
    _, other = await registry.workspace("Grants 2")
    foreign_fn, _ = await make_function(registry, other)

    def member(*grants: res.RoleGrant) -> pb.CreateMemberRequest:
        return pb.CreateMemberRequest(
            parent=parent, member=res.Member(email="x@example.com", roles=list(grants))
        )

    async def refused(*grants: res.RoleGrant) -> list[str]:
        error = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.stub.CreateMember(member(*grants), metadata=auth(owner)),
        )
        return [f for f, _ in violations(error)]

    assert await refused(
        res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[fn]),
        res.RoleGrant(role=res.ROLE_WORKSPACE_OWNER, sources=[src]),
    ) == ["member.roles[1].sources"]
    assert await refused(
        res.RoleGrant(role=res.ROLE_FUNCTIONS_READ_ONLY, functions=[foreign_fn]),
        res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=["src_1"]),
    ) == ["member.roles[0].functions[0]", "member.roles[1].sources[0]"]
    assert await refused(
        res.RoleGrant(role=res.ROLE_FUNCTIONS_ADMIN, functions=[fn, f"{parent}/functions/fn_no"]),
        res.RoleGrant(role=res.ROLE_SOURCE_ADMIN, sources=[f"{parent}/sources/src_no"]),
    ) == ["member.roles[0].functions[1]", "member.roles[1].sources[0]"]
    members = await registry.stub.ListMembers(
        pb.ListMembersRequest(parent=parent), metadata=auth(owner)
    )
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
    ws_id, owner = await registry.workspace("Gate")
    gate = RegistryGate(f"127.0.0.1:{registry.port}")
    try:
        with pytest.raises(Relayed) as bad:  # the registry's verdict, with its violations
            await gate.instance(CallContext(owner), "")  # type: ignore[arg-type]
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad.value.violations] == ["name"]
        with pytest.raises(NotFound):
            await gate.instance(  # type: ignore[arg-type]
                CallContext(owner), f"{ws(ws_id)}/instances/ins_missing"
            )
    finally:
        await gate.close()
    down = RegistryGate("127.0.0.1:9")  # nothing listens there
    try:
        with pytest.raises(Unavailable):
            await down.instance(  # type: ignore[arg-type]
                CallContext(owner), f"{ws(ws_id)}/instances/ins_x"
            )
    finally:
        await down.close()
