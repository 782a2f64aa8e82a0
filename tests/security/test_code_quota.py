"""How much function code a workspace may store. Every save keeps a version, and nothing bounded
them: one member saving 3.8 MB of code in a loop (saves need no deploy) grew the database every
tenant shares 113 MiB in 5 s. The versions of a workspace's functions now hold at most
`EVENTFN_REGISTRY_CODE_BYTES_PER_WORKSPACE` bytes of code together: past that, a save or a new
function is refused (RESOURCE_EXHAUSTED, no retry hint: waiting changes nothing) and nothing is
stored; another workspace's quota is its own."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import asyncpg
import grpc
import pytest

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from tests.registry.conftest import HANDLER, SETTINGS, Registry, auth, running_registry

QUOTA = 1024 * 1024


def code_of(size: int) -> str:
    """A handler padded with a comment of `size` random hex digits (no compression helps)."""
    return HANDLER + "\n// " + os.urandom(size // 2).hex()


async def create(
    registry: Registry, owner: str, workspace: str, code: str
) -> pb.DestinationFunction:
    created = await registry.stub.CreateFunction(
        pb.CreateFunctionRequest(
            parent=f"workspaces/{workspace}",
            function=res.DestinationFunction(display_name=f"fn {os.urandom(4).hex()}"),
            code=code,
            settings=SETTINGS,
        ),
        metadata=auth(owner),
    )
    return created.function


async def test_a_workspace_stores_its_quota_of_code_and_no_more(
    fresh_database: str, tmp_path: Path
) -> None:
    async with running_registry(
        fresh_database, tmp_path, registry_code_bytes_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Saver")
        fn = await create(registry, owner, workspace, code_of(300_000))
        etag = fn.etag
        for _ in range(2):  # 900 KB in all
            saved = await registry.stub.SaveFunction(
                pb.SaveFunctionRequest(
                    name=fn.name, code=code_of(300_000), settings=SETTINGS, etag=etag
                ),
                metadata=auth(owner),
            )
            etag = saved.function.etag
        for call in (
            registry.stub.SaveFunction(
                pb.SaveFunctionRequest(
                    name=fn.name, code=code_of(300_000), settings=SETTINGS, etag=etag
                ),
                metadata=auth(owner),
            ),
            create(registry, owner, workspace, code_of(300_000)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = refused.value.details() or ""
            assert "EVENTFN_REGISTRY_CODE_BYTES_PER_WORKSPACE" in details, details
        # Nothing of the refused calls was stored.
        listed = await registry.stub.ListFunctions(
            pb.ListFunctionsRequest(parent=f"workspaces/{workspace}"), metadata=auth(owner)
        )
        assert [f.etag for f in listed.functions] == [etag]
        # A neighbour stores its own.
        neighbour_ws, neighbour = await registry.workspace("Neighbour")
        await create(registry, neighbour, neighbour_ws, code_of(300_000))


async def test_what_else_a_version_or_function_keeps_is_bounded_too(
    fresh_database: str, tmp_path: Path
) -> None:
    # The quota counted code alone: 4 MB settings descriptions per save, and 4 MB function
    # descriptions, were stored past it unchecked.
    async with running_registry(
        fresh_database, tmp_path, registry_code_bytes_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Padder")
        padded = [
            *SETTINGS,
            types_pb2.SettingDefinition(
                label="Padding",
                name="padding",
                type=types_pb2.SETTING_TYPE_STRING,
                description=os.urandom(2_000_000).hex(),
            ),
        ]
        for function, settings, field in (
            (res.DestinationFunction(display_name="fat schema"), padded, "settings"),
            (
                res.DestinationFunction(
                    display_name="fat description", description=os.urandom(2_000_000).hex()
                ),
                SETTINGS,
                "function.description",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await registry.stub.CreateFunction(
                    pb.CreateFunctionRequest(
                        parent=f"workspaces/{workspace}",
                        function=function,
                        code=HANDLER,
                        settings=settings,
                    ),
                    metadata=auth(owner),
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (refused.value.details() or "")


async def test_concurrent_saves_stop_at_the_quota_as_sequential_ones(
    fresh_database: str, tmp_path: Path
) -> None:
    # Each passed a check of the same total: 10 creates of 300 KB at once stored 3 MB.
    async with running_registry(
        fresh_database, tmp_path, registry_code_bytes_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Racer")

        async def created() -> bool:
            try:
                await create(registry, owner, workspace, code_of(300_000))
            except grpc.aio.AioRpcError as refused:
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        accepted = sum(await asyncio.gather(*(created() for _ in range(10))))
        assert accepted == 3  # 900 KB and their definitions: the fourth would pass 1 MiB


DESCRIBED = [
    types_pb2.SettingDefinition(
        label=f"S{i}", name=f"s{i}", type=types_pb2.SETTING_TYPE_STRING, description="d" * 2800
    )
    for i in range(20)
]


async def test_request_records_keep_no_code(fresh_database: str, tmp_path: Path) -> None:
    """A create or save with a request_id keeps its response for a day, to answer a retry:
    it kept the version's code and settings definitions too (2.5 bytes a byte, sealed),
    outside the quota, so that creating and deleting a function in a loop stored without
    bound. A retry still gets them, read from the version."""
    async with running_registry(
        fresh_database, tmp_path, registry_code_bytes_per_workspace=QUOTA
    ) as registry:
        workspace, owner = await registry.workspace("Looper")
        for i in range(4):  # 3.6 MB of code under a 1 MiB quota
            request = pb.CreateFunctionRequest(
                parent=f"workspaces/{workspace}",
                function=res.DestinationFunction(display_name=f"fn {i}"),
                code=code_of(900_000),
                settings=[*SETTINGS, *DESCRIBED],  # 56 KB of definitions
                request_id=str(uuid.uuid4()),
            )
            made = await registry.stub.CreateFunction(request, metadata=auth(owner))
            retried = await registry.stub.CreateFunction(request, metadata=auth(owner))
            assert retried == made  # the code included
            await registry.stub.DeleteFunction(
                pb.DeleteFunctionRequest(name=made.function.name), metadata=auth(owner)
            )
        conn = await asyncpg.connect(registry.database_url)
        try:
            kept = await conn.fetchval(
                "SELECT coalesce(sum(octet_length(response)), 0) FROM request_record "
                "WHERE workspace_id = $1",
                workspace,
            )
        finally:
            await conn.close()
        assert kept < 40_000, f"request records keep {kept:,} bytes"
