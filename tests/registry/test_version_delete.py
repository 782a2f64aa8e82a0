"""Deleting one version of a function (DeleteFunctionVersion): the way out of the workspace's
code quota short of deleting whole functions. A version no instance runs, and not the latest
(new instances run the latest), is deleted and its bytes freed; the latest one, or one that
instances run, is kept with FAILED_PRECONDITION naming what to do; a deploy racing the delete
either runs the version (which is then kept) or is told it is gone, never an internal error."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.executor.versions import VersionSource
from tests.eventually import eventually
from tests.registry.conftest import (
    HANDLER,
    SERVICE,
    SETTINGS,
    Registry,
    auth,
    make_source,
    running_registry,
)
from tests.security.test_code_quota import code_of, create


async def new_function(r: Registry, owner: str, workspace: str, code: str = HANDLER) -> str:
    return (await create(r, owner, workspace, code)).name


async def save(r: Registry, owner: str, function: str, code: str = HANDLER) -> str:
    saved = await r.stub.SaveFunction(
        pb.SaveFunctionRequest(name=function, code=code, settings=SETTINGS),
        metadata=auth(owner),
    )
    return saved.version.name


async def delete(r: Registry, owner: str, version: str) -> None:
    await r.stub.DeleteFunctionVersion(
        pb.DeleteFunctionVersionRequest(name=version), metadata=auth(owner)
    )


async def new_instance(r: Registry, owner: str, workspace: str, function: str) -> str:
    source = await make_source(r, owner, f"Website {os.urandom(4).hex()}")
    values = struct_pb2.Struct()
    values.update({"endpoint": "http://127.0.0.1:9/hook", "apiKey": "k"})
    made = await r.stub.CreateInstance(
        pb.CreateInstanceRequest(
            parent=f"workspaces/{workspace}",
            instance=res.Instance(function=function, source=source.name, settings=values),
        ),
        metadata=auth(owner),
    )
    return made.instance.name


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value


async def versions(r: Registry, owner: str, function: str) -> list[str]:
    listed = await r.stub.ListFunctionVersions(
        pb.ListFunctionVersionsRequest(parent=function), metadata=auth(owner)
    )
    return [v.name for v in listed.versions]


async def test_an_old_version_is_deleted_and_its_bytes_freed(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_code_bytes_per_workspace=1024 * 1024
    ) as r:
        workspace, owner = await r.workspace("Pruner")
        fn = await new_function(r, owner, workspace, code_of(300_000))
        (first,) = await versions(r, owner, fn)
        await save(r, owner, fn, code_of(300_000))
        await save(r, owner, fn, code_of(300_000))
        full = await refused(save(r, owner, fn, code_of(300_000)))
        assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "DeleteFunctionVersion" in (full.details() or "")

        await delete(r, owner, first)

        assert first not in await versions(r, owner, fn)
        gone = await refused(
            r.stub.GetFunctionVersion(
                pb.GetFunctionVersionRequest(name=first), metadata=auth(owner)
            )
        )
        assert gone.code() == grpc.StatusCode.NOT_FOUND
        await save(r, owner, fn, code_of(300_000))  # room again
        again = await refused(delete(r, owner, first))
        assert again.code() == grpc.StatusCode.NOT_FOUND
        audit = await r.stub.ListAuditEvents(
            pb.ListAuditEventsRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
        )
        (deleted,) = [
            e for e in audit.events if e.action == res.AUDIT_ACTION_FUNCTION_VERSION_DELETE
        ]
        assert (deleted.resource, deleted.details["version"]) == (fn, first)


async def test_the_latest_version_and_versions_instances_run_are_kept(
    registry: Registry,
) -> None:
    r = registry
    workspace, owner = await r.workspace("Keeper")
    fn = await new_function(r, owner, workspace)
    (first,) = await versions(r, owner, fn)
    instance = await new_instance(r, owner, workspace, fn)
    second = await save(r, owner, fn)

    latest = await refused(delete(r, owner, second))
    assert latest.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "latest" in (latest.details() or "")
    running = await refused(delete(r, owner, first))
    assert running.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert instance in (running.details() or "")
    assert "DeployInstance" in (running.details() or "")
    assert await versions(r, owner, fn) == [second, first]  # nothing deleted

    await r.stub.DeployInstance(
        pb.DeployInstanceRequest(name=instance, version=second), metadata=auth(owner)
    )
    await delete(r, owner, first)
    back = await refused(
        r.stub.DeployInstance(
            pb.DeployInstanceRequest(name=instance, version=first), metadata=auth(owner)
        )
    )
    assert back.code() == grpc.StatusCode.NOT_FOUND

    # Another workspace's owner is told what a name that never existed tells.
    _, stranger = await r.workspace("Stranger")
    theirs = await refused(delete(r, stranger, second))
    assert theirs.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deploy_racing_the_delete_is_never_an_internal_error(
    registry: Registry,
) -> None:
    r = registry
    workspace, owner = await r.workspace("Racer")
    fn = await new_function(r, owner, workspace)
    instance = await new_instance(r, owner, workspace, fn)
    for _ in range(15):
        old = await save(r, owner, fn)
        await save(r, owner, fn)  # `old` is no longer the latest
        deploy = r.stub.DeployInstance(
            pb.DeployInstanceRequest(name=instance, version=old), metadata=auth(owner)
        )
        results = await asyncio.gather(deploy, delete(r, owner, old), return_exceptions=True)
        codes = tuple(
            x.code() if isinstance(x, grpc.aio.AioRpcError) else grpc.StatusCode.OK for x in results
        )
        assert codes in {
            (grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION),  # deployed, kept
            (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK),  # deleted first
        }, results
        if codes[0] == grpc.StatusCode.OK:  # move off it again for the next round
            await r.stub.DeployInstance(
                pb.DeployInstanceRequest(name=instance, version=(await versions(r, owner, fn))[0]),
                metadata=auth(owner),
            )


async def test_executors_stop_running_a_deleted_version(registry: Registry) -> None:
    """Executors keep the versions dead letters are replayed on: one deleted meanwhile ran
    there for the rest of a replay, where others discarded its packs. A kept version is asked
    for again after a while (10 s; here 0.2)."""
    r = registry
    workspace, owner = await r.workspace("Cached")
    fn = await new_function(r, owner, workspace)
    (old,) = await versions(r, owner, fn)
    await save(r, owner, fn)
    source = VersionSource(f"127.0.0.1:{r.port}", SERVICE, cached_seconds=0.2)
    try:
        config = pb.InstanceConfig(workspace_id=workspace, function_id=fn.rsplit("/", 1)[-1])
        old_id = old.rsplit("/", 1)[-1]
        assert await source.get(config, old_id) is not None  # a replay's first pack
        await delete(r, owner, old)
        await eventually(
            lambda: source.get(config, old_id),
            "the deleted version gone",
            until=lambda v: v is None,
        )
    finally:
        await source.close()
