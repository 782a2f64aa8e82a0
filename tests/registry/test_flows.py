"""Registry behaviour a user relies on, and each bad input of the foundation issue."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from tests.registry.conftest import BOOTSTRAP, HANDLER, SETTINGS, Registry, auth


def settings(**values: object) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


async def make_function(r: Registry, token: str, name: str = "Webhook") -> tuple[str, str]:
    fn = await r.stub.CreateFunction(
        pb.CreateFunctionRequest(name=name, code=HANDLER, settings=SETTINGS), metadata=auth(token)
    )
    src = await r.stub.CreateSource(
        pb.CreateSourceRequest(name=f"{name} src"), metadata=auth(token)
    )
    return fn.function.id, src.source.id


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
    _, owner = await registry.workspace("Acme")
    fn_id, src_id = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id,
                source_id=src_id,
                settings=settings(endpoint="http://127.0.0.1:1/x", apiKey="sk_live_SECRET"),
            ),
            metadata=auth(owner),
        )
    ).instance
    assert ins.batch_size == 20 and ins.batch_wait_ms == 10_000 and ins.enabled
    v1 = ins.version_id
    saved = await registry.stub.SaveFunction(
        pb.SaveFunctionRequest(function_id=fn_id, code=HANDLER + "\n// v2", settings=SETTINGS),
        metadata=auth(owner),
    )
    assert saved.version.number == 2
    got = await registry.stub.GetInstance(
        pb.GetInstanceRequest(instance_id=ins.id), metadata=auth(owner)
    )
    assert got.instance.version_id == v1, "a plain Save must not move instances"
    deployed = await registry.stub.SaveFunction(
        pb.SaveFunctionRequest(
            function_id=fn_id,
            code=HANDLER + "\n// v3",
            settings=SETTINGS,
            deploy_instance_ids=[ins.id],
        ),
        metadata=auth(owner),
    )
    assert deployed.deployed_instances[0].version_id == deployed.version.id
    rolled = await registry.stub.DeployInstance(
        pb.DeployInstanceRequest(instance_id=ins.id, version_id=v1), metadata=auth(owner)
    )
    assert rolled.instance.version_id == v1
    versions = await registry.stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(function_id=fn_id), metadata=auth(owner)
    )
    assert [v.number for v in versions.versions] == [3, 2, 1]
    audit = await registry.stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=auth(owner))
    actions = [e.action for e in audit.events]
    assert actions[:4] == ["instance.deploy", "function.save", "instance.deploy", "function.save"]
    assert "instance.create" in actions and "function.create" in actions
    deploy = audit.events[0]
    assert deploy.details["from_version_id"] != deploy.details["to_version_id"]


async def test_pagination_walks_every_page(registry: Registry) -> None:
    _, owner = await registry.workspace("Pages")
    for i in range(7):
        await registry.stub.CreateSource(pb.CreateSourceRequest(name=f"s{i}"), metadata=auth(owner))
    names, token = [], ""
    while True:
        page = await registry.stub.ListSources(
            pb.ListSourcesRequest(page_size=3, page_token=token), metadata=auth(owner)
        )
        names += [s.name for s in page.sources]
        token = page.next_page_token
        if not token:
            break
    assert names == [f"s{i}" for i in range(7)]
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.ListSources(
            pb.ListSourcesRequest(page_token="garbage!"), metadata=auth(owner)
        ),
    )


@pytest.mark.parametrize("token", ["", "efn_not-a-real-token", "Basic abc"])
async def test_invalid_tokens_are_unauthenticated(registry: Registry, token: str) -> None:
    metadata = (("authorization", token),) if token.startswith("Basic") else auth(token)
    if not token:
        metadata = ()
    await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(pb.ListSourcesRequest(), metadata=metadata),
    )


async def test_revoked_and_expired_tokens_stop_working(registry: Registry) -> None:
    _, owner = await registry.workspace("Tokens")
    made = await registry.stub.CreateToken(pb.CreateTokenRequest(name="ci"), metadata=auth(owner))
    await registry.stub.ListSources(pb.ListSourcesRequest(), metadata=auth(made.secret))
    await registry.stub.RevokeToken(
        pb.RevokeTokenRequest(token_id=made.token.id), metadata=auth(owner)
    )
    err = await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(pb.ListSourcesRequest(), metadata=auth(made.secret)),
    )
    assert "revoked" in (err.details() or "")
    short = await registry.stub.CreateToken(
        pb.CreateTokenRequest(name="short", ttl_seconds=1), metadata=auth(owner)
    )
    conn = await asyncpg.connect(registry.database_url)
    await conn.execute(
        "UPDATE token SET expires_at = now() - interval '1 second' WHERE id = $1", short.token.id
    )
    await conn.close()
    err = await expect(
        grpc.StatusCode.UNAUTHENTICATED,
        registry.stub.ListSources(pb.ListSourcesRequest(), metadata=auth(short.secret)),
    )
    assert "expired" in (err.details() or "")


async def test_other_workspace_objects_are_not_found(registry: Registry) -> None:
    _, a = await registry.workspace("A")
    _, b = await registry.workspace("B")
    fn_id, src_id = await make_function(registry, a)
    for call in (
        registry.stub.GetFunction(pb.GetFunctionRequest(function_id=fn_id), metadata=auth(b)),
        registry.stub.GetSource(pb.GetSourceRequest(source_id=src_id), metadata=auth(b)),
        registry.stub.RotateWriteKey(pb.RotateWriteKeyRequest(source_id=src_id), metadata=auth(b)),
        registry.stub.GetFunction(
            pb.GetFunctionRequest(function_id="fn_doesnotexist"), metadata=auth(b)
        ),
    ):
        err = await expect(grpc.StatusCode.NOT_FOUND, call)
        assert "not found" in (err.details() or "")


async def test_duplicate_function_name(registry: Registry) -> None:
    _, owner = await registry.workspace("Dup")
    await make_function(registry, owner, "Same")
    before = await table_counts(registry.database_url)
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateFunction(
            pb.CreateFunctionRequest(name="Same", code=HANDLER), metadata=auth(owner)
        ),
    )
    assert await table_counts(registry.database_url) == before


async def test_syntax_error_names_line_and_column(registry: Registry) -> None:
    _, owner = await registry.workspace("Syntax")
    before = await table_counts(registry.database_url)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(
            pb.CreateFunctionRequest(
                name="Broken", code="async function onTrack(e) {\n  return {\n}\n"
            ),
            metadata=auth(owner),
        ),
    )
    assert "line" in (err.details() or "") and "column" in (err.details() or "")
    assert violations(err)[0][0] == "code"
    assert await table_counts(registry.database_url) == before


async def test_unknown_setting_type_and_bad_names(registry: Registry) -> None:
    _, owner = await registry.workspace("Types")
    bad = [
        types_pb2.SettingDefinition(name="ok", type=99),  # type: ignore[arg-type]
        types_pb2.SettingDefinition(name="2bad", type=types_pb2.SETTING_TYPE_STRING),
        types_pb2.SettingDefinition(name="dup", type=types_pb2.SETTING_TYPE_STRING),
        types_pb2.SettingDefinition(name="dup", type=types_pb2.SETTING_TYPE_STRING),
    ]
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(
            pb.CreateFunctionRequest(name="T", code=HANDLER, settings=bad), metadata=auth(owner)
        ),
    )
    fields = [f for f, _ in violations(err)]
    assert fields == ["settings[0].type", "settings[1].name", "settings[3].name"]


async def test_missing_required_setting_is_named(registry: Registry) -> None:
    _, owner = await registry.workspace("Req")
    fn_id, src_id = await make_function(registry, owner)
    before = await table_counts(registry.database_url)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id, source_id=src_id, settings=settings(endpoint="http://x")
            ),
            metadata=auth(owner),
        ),
    )
    assert violations(err) == [("settings.apiKey", "the required setting 'apiKey' is missing")]
    assert await table_counts(registry.database_url) == before


@pytest.mark.parametrize("size", [0, 401])
async def test_batch_size_out_of_range(registry: Registry, size: int) -> None:
    _, owner = await registry.workspace(f"Batch{size}")
    fn_id, src_id = await make_function(registry, owner)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id,
                source_id=src_id,
                batch_size=size,
                settings=settings(endpoint="http://x", apiKey="k"),
            ),
            metadata=auth(owner),
        ),
    )
    assert violations(err)[0][0] == "batch_size"


async def test_oversize_code(registry: Registry) -> None:
    _, owner = await registry.workspace("Big")
    code = HANDLER + "//" + "x" * (5 * 1024 * 1024)
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateFunction(
            pb.CreateFunctionRequest(name="Big", code=code), metadata=auth(owner)
        ),
    )
    assert "5 MB" in (err.details() or "")


async def test_concurrent_deploys_last_write_wins_without_torn_state(registry: Registry) -> None:
    _, owner = await registry.workspace("Race")
    fn_id, src_id = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id,
                source_id=src_id,
                settings=settings(endpoint="http://x", apiKey="k"),
            ),
            metadata=auth(owner),
        )
    ).instance
    versions = [ins.version_id]
    for i in range(4):
        saved = await registry.stub.SaveFunction(
            pb.SaveFunctionRequest(function_id=fn_id, code=HANDLER + f"//{i}", settings=SETTINGS),
            metadata=auth(owner),
        )
        versions.append(saved.version.id)
    # Everyone read the same etag; exactly one deploy may win with the etag check.
    results = await asyncio.gather(
        *(
            registry.stub.DeployInstance(
                pb.DeployInstanceRequest(instance_id=ins.id, version_id=v, etag=ins.etag),
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
        await registry.stub.GetInstance(
            pb.GetInstanceRequest(instance_id=ins.id), metadata=auth(owner)
        )
    ).instance
    assert final.version_id == wins[0].instance.version_id and final.etag == wins[0].instance.etag
    assert final.etag != ins.etag
    # Without an etag, concurrent deploys serialize: the last one wins, none is torn.
    unchecked = await asyncio.gather(
        *(
            registry.stub.DeployInstance(
                pb.DeployInstanceRequest(instance_id=ins.id, version_id=v), metadata=auth(owner)
            )
            for v in versions
        )
    )
    final = (
        await registry.stub.GetInstance(
            pb.GetInstanceRequest(instance_id=ins.id), metadata=auth(owner)
        )
    ).instance
    assert len({u.instance.etag for u in unchecked}) == len(versions)
    assert final.version_id in {
        u.instance.version_id for u in unchecked if u.instance.etag == final.etag
    }


async def test_update_instance_mask_and_secret_kept(registry: Registry) -> None:
    _, owner = await registry.workspace("Upd")
    fn_id, src_id = await make_function(registry, owner)
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                function_id=fn_id,
                source_id=src_id,
                settings=settings(endpoint="http://a", apiKey="s3cr3t"),
            ),
            metadata=auth(owner),
        )
    ).instance
    masked = ins.settings["apiKey"]
    new = res.Instance(
        id=ins.id, batch_size=100, settings=settings(endpoint="http://b", apiKey=masked)
    )
    upd = await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=new, update_mask=field_mask_pb2.FieldMask(paths=["batch_size", "settings"])
        ),
        metadata=auth(owner),
    )
    assert upd.instance.batch_size == 100 and upd.instance.settings["endpoint"] == "http://b"
    assert upd.instance.settings["apiKey"] == masked
    await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.UpdateInstance(
            pb.UpdateInstanceRequest(
                instance=res.Instance(id=ins.id),
                update_mask=field_mask_pb2.FieldMask(paths=["batch_size"]),
            ),
            metadata=auth(owner),
        ),
    )


async def test_only_bootstrap_admin_creates_workspaces(registry: Registry) -> None:
    _, owner = await registry.workspace("Owner")
    await expect(
        grpc.StatusCode.PERMISSION_DENIED,
        registry.stub.CreateWorkspace(pb.CreateWorkspaceRequest(name="X"), metadata=auth(owner)),
    )
    await expect(
        grpc.StatusCode.ALREADY_EXISTS,
        registry.stub.CreateWorkspace(
            pb.CreateWorkspaceRequest(name="Owner"), metadata=auth(BOOTSTRAP)
        ),
    )


async def test_retry_overrides_are_checked_and_reach_the_data_plane(registry: Registry) -> None:
    _, owner = await registry.workspace("Retry")
    fn_id, src_id = await make_function(registry, owner)
    base = {"function_id": fn_id, "source_id": src_id}
    values = settings(endpoint="http://x", apiKey="k")
    err = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        registry.stub.CreateInstance(
            pb.CreateInstanceRequest(**base, settings=values, retry_window_seconds=30),
            metadata=auth(owner),
        ),
    )
    assert violations(err)[0][0] == "retry_window_seconds"
    ins = (
        await registry.stub.CreateInstance(
            pb.CreateInstanceRequest(
                **base, settings=values, retry_window_seconds=600, retry_max_delay_seconds=30
            ),
            metadata=auth(owner),
        )
    ).instance
    assert (ins.retry_window_seconds, ins.retry_max_delay_seconds) == (600, 30)
    upd = await registry.stub.UpdateInstance(
        pb.UpdateInstanceRequest(
            instance=res.Instance(id=ins.id, retry_window_seconds=0),
            update_mask=field_mask_pb2.FieldMask(paths=["retry_window_seconds"]),
        ),
        metadata=auth(owner),
    )
    assert (upd.instance.retry_window_seconds, upd.instance.retry_max_delay_seconds) == (0, 30)
