"""Registry behaviour a user relies on, and each bad input of the foundation issue."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from tests.registry.conftest import BOOTSTRAP, HANDLER, SETTINGS, Registry, auth, ws


def settings(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def parent_of(r: Registry, token: str) -> str:
    """Return the name of the token's workspace."""
    return (await r.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(token))).workspace.name


def new_function(parent: str, name: str, code: str = HANDLER, **kw) -> pb.CreateFunctionRequest:
    """Build a CreateFunctionRequest."""
    return pb.CreateFunctionRequest(
        parent=parent, function=res.DestinationFunction(display_name=name), code=code, **kw
    )


def new_instance(parent: str, function: str, source: str, **fields) -> pb.CreateInstanceRequest:
    """Build a CreateInstanceRequest."""
    return pb.CreateInstanceRequest(
        parent=parent, instance=res.Instance(function=function, source=source, **fields)
    )


def duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


async def make_function(r: Registry, token: str, name: str = "Webhook") -> tuple[str, str]:
    """Create a function and a source; return their names."""
    parent = await parent_of(r, token)
    fn = await r.stub.CreateFunction(
        new_function(parent, name, settings=SETTINGS), metadata=auth(token)
    )
    src = await r.stub.CreateSource(
        pb.CreateSourceRequest(parent=parent, source=res.Source(display_name=f"{name} src")),
        metadata=auth(token),
    )
    return fn.function.name, src.source.name


async def expect(code: grpc.StatusCode, call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    return info.value


def violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    out = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


async def table_counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        tables = ["function", "function_version", "instance", "source", "member", "token"]
        return {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
    finally:
        await conn.close()


async def test_save_deploy_rollback_and_audit(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Acme")
    parent = ws(ws_id)
    fn, src = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            new_instance(
                parent,
                fn,
                src,
                settings=settings(endpoint="http://127.0.0.1:1/x", apiKey="sk_live_SECRET"),
            ),
            metadata=auth(owner),
        )
    ).instance
    assert ins.batch_size == 20 and ins.batch_wait.ToTimedelta() == timedelta(seconds=10)
    assert ins.state == res.Instance.STATE_ENABLED
    assert ins.timeout.ToTimedelta() == timedelta(seconds=5) and not ins.HasField("retry_window")
    v1 = ins.version
    assert v1.startswith(fn + "/versions/")
    saved = await registry.stub.SaveFunction(
        pb.SaveFunctionRequest(name=fn, code=HANDLER + "\n// v2", settings=SETTINGS),
        metadata=auth(owner),
    )
    assert saved.version.number == 2
    got = await registry.stub.GetInstance(
        pb.GetInstanceRequest(name=ins.name), metadata=auth(owner)
    )
    assert got.instance.version == v1, "a plain Save must not move instances"
    deployed = await registry.stub.SaveFunction(
        pb.SaveFunctionRequest(
            name=fn, code=HANDLER + "\n// v3", settings=SETTINGS, deploy_instances=[ins.name]
        ),
        metadata=auth(owner),
    )
    assert deployed.deployed_instances[0].version == deployed.version.name
    rolled = await registry.stub.DeployInstance(
        pb.DeployInstanceRequest(name=ins.name, version=v1), metadata=auth(owner)
    )
    assert rolled.instance.version == v1
    versions = await registry.stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(parent=fn), metadata=auth(owner)
    )
    assert [v.number for v in versions.versions] == [3, 2, 1]
    audit = await registry.stub.ListAuditEvents(
        pb.ListAuditEventsRequest(parent=parent), metadata=auth(owner)
    )
    actions = [e.action for e in audit.events]
    assert actions[:4] == [
        res.AUDIT_ACTION_INSTANCE_DEPLOY,
        res.AUDIT_ACTION_FUNCTION_SAVE,
        res.AUDIT_ACTION_INSTANCE_DEPLOY,
        res.AUDIT_ACTION_FUNCTION_SAVE,
    ]
    assert res.AUDIT_ACTION_INSTANCE_CREATE in actions
    assert res.AUDIT_ACTION_FUNCTION_CREATE in actions
    deploy = audit.events[0]
    assert deploy.resource == ins.name and deploy.resource_type == res.RESOURCE_TYPE_INSTANCE
    assert deploy.details["from_version"] != deploy.details["to_version"]
    assert deploy.actor.startswith(parent + "/members/")


async def test_a_workspace_owner_is_named_by_the_email_given(registry: Registry) -> None:
    """The first owner was always the bootstrap administrator's `admin`: the audit trail named
    `admin` for everything done with the new workspace's owner token."""
    made = await registry.stub.CreateWorkspace(
        pb.CreateWorkspaceRequest(
            workspace=res.Workspace(display_name="Named owner"), owner_email="ada@acme.io"
        ),
        metadata=auth(BOOTSTRAP),
    )
    assert made.owner.email == "ada@acme.io"
    me = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(made.token))
    assert me.member.email == "ada@acme.io"
    unnamed = await registry.stub.CreateWorkspace(
        pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name="Unnamed owner")),
        metadata=auth(BOOTSTRAP),
    )
    admin = await registry.stub.WhoAmI(pb.WhoAmIRequest(), metadata=auth(BOOTSTRAP))
    assert unnamed.owner.email == admin.member.email


async def test_pagination_walks_every_page(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Pages")
    for i in range(7):
        await registry.stub.CreateSource(
            pb.CreateSourceRequest(parent=ws(ws_id), source=res.Source(display_name=f"s{i}")),
            metadata=auth(owner),
        )
    names, token = [], ""
    while True:
        page = await registry.stub.ListSources(
            pb.ListSourcesRequest(parent=ws(ws_id), page_size=3, page_token=token),
            metadata=auth(owner),
        )
        names += [s.display_name for s in page.sources]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"s{i}" for i in range(7)]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListSources(
            pb.ListSourcesRequest(parent=ws(ws_id), page_token="garbage!"), metadata=auth(owner)
        ),
    )


@pytest.mark.parametrize("token", ["", "efn_not-a-real-token", "Basic abc"])
async def test_invalid_tokens_are_unauthenticated(registry: Registry, token: str) -> None:
    metadata = (("authorization", token),) if token.startswith("Basic") else auth(token)
    if not token:
        metadata = ()
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(pb.ListSourcesRequest(parent="workspaces/x"), metadata=metadata),
    )


async def test_revoked_and_expired_tokens_stop_working(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Tokens")
    parent = ws(ws_id)
    made = await registry.stub.CreateToken(
        pb.CreateTokenRequest(parent=parent, token=res.Token(display_name="ci")),
        metadata=auth(owner),
    )
    await registry.stub.ListSources(
        pb.ListSourcesRequest(parent=parent), metadata=auth(made.secret)
    )
    await registry.stub.RevokeToken(
        pb.RevokeTokenRequest(name=made.token.name), metadata=auth(owner)
    )
    err = await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(pb.ListSourcesRequest(parent=parent), metadata=auth(made.secret)),
    )
    assert "revoked" in (err.details() or "")
    short = await registry.stub.CreateToken(
        pb.CreateTokenRequest(
            parent=parent, token=res.Token(display_name="short"), ttl=duration(1)
        ),
        metadata=auth(owner),
    )
    assert short.token.HasField("expire_time")
    conn = await asyncpg.connect(registry.database_url)
    await conn.execute(
        "UPDATE token SET expires_at = now() - interval '1 second' WHERE id = $1",
        short.token.name.rsplit("/", 1)[-1],
    )
    await conn.close()
    err = await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(
            pb.ListSourcesRequest(parent=parent), metadata=auth(short.secret)
        ),
    )
    assert "expired" in (err.details() or "")
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateToken(
            pb.CreateTokenRequest(parent=parent, ttl=duration(-1)), metadata=auth(owner)
        ),
    )
    assert violations(err)[0][0] == "ttl"


async def test_other_workspace_objects_are_not_found(registry: Registry) -> None:
    _, a = await registry.workspace("A")
    b_id, b = await registry.workspace("B")
    fn, src = await make_function(registry, a)
    for call in (
        registry.stub.GetFunction(pb.GetFunctionRequest(name=fn), metadata=auth(b)),
        registry.stub.GetSource(pb.GetSourceRequest(name=src), metadata=auth(b)),
        registry.stub.RotateWriteKey(pb.RotateWriteKeyRequest(name=src), metadata=auth(b)),
        registry.stub.GetFunction(
            pb.GetFunctionRequest(name=f"{ws(b_id)}/functions/fn_doesnotexist"), metadata=auth(b)
        ),
        registry.stub.ListSources(
            pb.ListSourcesRequest(parent=fn.split("/functions/")[0]), metadata=auth(b)
        ),
    ):
        err = await expect(grpc.StatusCode.NOT_FOUND, call)
        assert "not found" in (err.details() or "")


async def test_malformed_names_are_invalid_argument(registry: Registry) -> None:
    _, owner = await registry.workspace("Names")
    fn, src = await make_function(registry, owner)
    for call, field in (
        (registry.stub.GetFunction(pb.GetFunctionRequest(name=src), metadata=auth(owner)), "name"),
        (registry.stub.GetSource(pb.GetSourceRequest(name="src_1"), metadata=auth(owner)), "name"),
        (
            registry.stub.ListSources(pb.ListSourcesRequest(parent=fn), metadata=auth(owner)),
            "parent",
        ),
        (
            registry.stub.GetFunctionVersion(
                pb.GetFunctionVersionRequest(name=fn), metadata=auth(owner)
            ),
            "name",
        ),
    ):
        err = await expect(grpc.StatusCode.INVALID_ARGUMENT, call)
        assert violations(err)[0][0] == field


async def test_duplicate_function_name(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Dup")
    await make_function(registry, owner, "Same")
    before = await table_counts(registry.database_url)
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateFunction(new_function(ws(ws_id), "Same"), metadata=auth(owner)),
    )
    assert await table_counts(registry.database_url) == before


async def test_syntax_error_names_line_and_column(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Syntax")
    before = await table_counts(registry.database_url)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(
            new_function(ws(ws_id), "Broken", "async function onTrack(e) {\n  return {\n}\n"),
            metadata=auth(owner),
        ),
    )
    assert "line" in (err.details() or "") and "column" in (err.details() or "")
    assert violations(err)[0][0] == "code"
    assert await table_counts(registry.database_url) == before


async def test_unknown_setting_type_and_bad_names(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Types")
    bad = [
        types_pb2.SettingDefinition(name="ok", type=99),  # type: ignore[arg-type]
        types_pb2.SettingDefinition(name="2bad", type=types_pb2.SETTING_TYPE_STRING),
        types_pb2.SettingDefinition(name="dup", type=types_pb2.SETTING_TYPE_STRING),
        types_pb2.SettingDefinition(name="dup", type=types_pb2.SETTING_TYPE_STRING),
    ]
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(
            new_function(ws(ws_id), "T", settings=bad), metadata=auth(owner)
        ),
    )
    fields = [f for f, _ in violations(err)]
    assert fields == ["settings[0].type", "settings[1].name", "settings[3].name"]


async def test_missing_required_setting_is_named(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Req")
    fn, src = await make_function(registry, owner)
    before = await table_counts(registry.database_url)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(ws(ws_id), fn, src, settings=settings(endpoint="http://x")),
            metadata=auth(owner),
        ),
    )
    assert violations(err) == [("settings.apiKey", "the required setting 'apiKey' is missing")]
    assert await table_counts(registry.database_url) == before


@pytest.mark.parametrize("size", [-1, 401])
async def test_batch_size_out_of_range(registry: Registry, size: int) -> None:
    ws_id, owner = await registry.workspace(f"Batch{size}")
    fn, src = await make_function(registry, owner)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(
                ws(ws_id),
                fn,
                src,
                batch_size=size,
                settings=settings(endpoint="http://x", apiKey="k"),
            ),
            metadata=auth(owner),
        ),
    )
    assert violations(err)[0][0] == "instance.batch_size"


async def test_durations_must_be_whole_milliseconds_and_in_range(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Durations")
    fn, src = await make_function(registry, owner)
    values = settings(endpoint="http://x", apiKey="k")
    for fields, field in (
        ({"batch_wait": duration(0.0005)}, "instance.batch_wait"),
        ({"batch_wait": duration(61)}, "instance.batch_wait"),
        ({"timeout": duration(0.05)}, "instance.timeout"),
        ({"retry_window": duration(1.5)}, "instance.retry_window"),
        ({"state": 7}, "instance.state"),
    ):
        err = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.stub.CreateInstance(
                new_instance(ws(ws_id), fn, src, settings=values, **fields), metadata=auth(owner)
            ),
        )
        assert violations(err)[0][0] == field, fields


async def test_oversize_code(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Big")
    code = HANDLER + "//" + "x" * (5 * 1024 * 1024)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(new_function(ws(ws_id), "Big", code), metadata=auth(owner)),
    )
    assert "5 MB" in (err.details() or "")


async def test_concurrent_deploys_last_write_wins_without_torn_state(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Race")
    fn, src = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            new_instance(ws(ws_id), fn, src, settings=settings(endpoint="http://x", apiKey="k")),
            metadata=auth(owner),
        )
    ).instance
    versions = [ins.version]
    for i in range(4):
        saved = await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(name=fn, code=HANDLER + f"//{i}", settings=SETTINGS),
            metadata=auth(owner),
        )
        versions.append(saved.version.name)
    # Everyone read the same etag; exactly one deploy may win with the etag check.
    results = await asyncio.gather(
        *(
            registry.stub.DeployInstance(
                pb.DeployInstanceRequest(name=ins.name, version=v, etag=ins.etag),
                metadata=auth(owner),
            )
            for v in versions[1:]
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, Exception)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 3
    assert all(e.code() == grpc.StatusCode.ABORTED for e in losses)
    final = (
        await registry.stub.GetInstance(pb.GetInstanceRequest(name=ins.name), metadata=auth(owner))
    ).instance
    assert final.version == wins[0].instance.version and final.etag == wins[0].instance.etag
    assert final.etag != ins.etag
    # Without an etag, concurrent deploys serialize: the last one wins, none is torn.
    unchecked = await asyncio.gather(
        *(
            registry.stub.DeployInstance(
                pb.DeployInstanceRequest(name=ins.name, version=v), metadata=auth(owner)
            )
            for v in versions
        )
    )
    final = (
        await registry.stub.GetInstance(pb.GetInstanceRequest(name=ins.name), metadata=auth(owner))
    ).instance
    assert len({u.instance.etag for u in unchecked}) == len(versions)
    assert final.version in {u.instance.version for u in unchecked if u.instance.etag == final.etag}


async def test_update_instance_mask_and_secret_kept(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Upd")
    fn, src = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            new_instance(
                ws(ws_id), fn, src, settings=settings(endpoint="http://a", apiKey="s3cr3t")
            ),
            metadata=auth(owner),
        )
    ).instance
    masked = ins.settings["apiKey"]
    new = res.Instance(
        name=ins.name,
        batch_size=100,
        batch_wait=duration(0),
        state=res.Instance.STATE_DISABLED,
        settings=settings(endpoint="http://b", apiKey=masked),
    )
    upd = await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=new,
            update_mask=field_mask_pb2.FieldMask(
                paths=["batch_size", "settings", "batch_wait", "state"]
            ),
        ),
        metadata=auth(owner),
    )
    assert upd.instance.batch_size == 100 and upd.instance.settings["endpoint"] == "http://b"
    assert upd.instance.batch_wait.ToTimedelta() == timedelta(0)
    assert upd.instance.state == res.Instance.STATE_DISABLED
    assert upd.instance.settings["apiKey"] == masked
    for mask in (["batch_size"], ["function"], []):
        await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            registry.stub.UpdateInstance(
                pb.UpdateInstanceRequest(
                    instance=res.Instance(name=ins.name),
                    update_mask=field_mask_pb2.FieldMask(paths=mask),
                ),
                metadata=auth(owner),
            ),
        )


async def test_renaming_an_instance_to_a_taken_name_names_the_holder(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Rename")
    fn, src = await make_function(registry, owner)
    made = [
        (
            await registry.stub.CreateInstance(
                new_instance(
                    ws(ws_id),
                    fn,
                    src,
                    display_name=name,
                    settings=settings(endpoint="http://a", apiKey="k"),
                ),
                metadata=auth(owner),
            )
        ).instance
        for name in ("first", "second")
    ]
    error = await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(name=made[1].name, display_name="first"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=auth(owner),
        ),
    )
    assert made[0].name in (error.details() or "") and "pick another" in (error.details() or "")


async def test_only_bootstrap_admin_creates_workspaces(registry: Registry) -> None:
    _, owner = await registry.workspace("Owner")
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        registry.stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name="X")),
            metadata=auth(owner),
        ),
    )
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(workspace=res.Workspace(display_name="Owner")),
            metadata=auth(BOOTSTRAP),
        ),
    )
    listed = await registry.stub.ListWorkspaces(pb.ListWorkspacesRequest(), metadata=auth(owner))
    assert [w.display_name for w in listed.workspaces] == ["Owner"]
    everything = await registry.stub.ListWorkspaces(
        pb.ListWorkspacesRequest(), metadata=auth(BOOTSTRAP)
    )
    assert "Owner" in {w.display_name for w in everything.workspaces}


async def test_retry_overrides_are_checked_and_reach_the_data_plane(registry: Registry) -> None:
    ws_id, owner = await registry.workspace("Retry")
    fn, src = await make_function(registry, owner)
    values = settings(endpoint="http://x", apiKey="k")
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            new_instance(ws(ws_id), fn, src, settings=values, retry_window=duration(30)),
            metadata=auth(owner),
        ),
    )
    assert violations(err)[0][0] == "instance.retry_window"
    ins = (
        await registry.stub.CreateInstance(
            new_instance(
                ws(ws_id),
                fn,
                src,
                settings=values,
                retry_window=duration(600),
                retry_max_delay=duration(30),
            ),
            metadata=auth(owner),
        )
    ).instance
    assert ins.retry_window.seconds == 600 and ins.retry_max_delay.seconds == 30
    upd = await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(name=ins.name),
            update_mask=field_mask_pb2.FieldMask(paths=["retry_window"]),
        ),
        metadata=auth(owner),
    )
    assert not upd.instance.HasField("retry_window")
    assert upd.instance.retry_max_delay.seconds == 30
