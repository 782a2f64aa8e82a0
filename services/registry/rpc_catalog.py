"""Registry RPCs of sources, functions and function versions."""

from __future__ import annotations

import asyncio
import secrets as pysecrets

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn.registry.v1 import registry_pb2 as pb
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps, audit
from services.registry.models import Function, FunctionVersion, Instance, Source
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import (
    check_code,
    check_name,
    check_page_size,
    check_setting_definitions,
)

Ctx = grpc.aio.ServicerContext


def new_write_key() -> str:
    """Make a new source write key."""
    return pysecrets.token_urlsafe(24)


class CatalogRpcs:
    """Sources, functions, versions."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def CreateSource(
        self, request: pb.CreateSourceRequest, context: Ctx
    ) -> pb.CreateSourceResponse:
        """Create a source with a new write key."""
        caller = await self.authn.caller(context)
        require(
            caller.can_admin_source(None),
            "create sources (Workspace Owner or Source Admin of all sources)",
        )
        name = check_name("name", request.name)
        try:
            async with self.store.transaction() as s:
                src = Source(
                    id=new_id("src"),
                    workspace_id=caller.workspace_id,
                    name=name,
                    write_key=new_write_key(),
                    created_at=now(),
                )
                s.add(src)
                await s.flush()
                await audit(
                    self.store,
                    s,
                    caller,
                    "source.create",
                    "source",
                    src.id,
                    {"name": name},
                )
                await self.store.bump_config(s)
        except IntegrityError as error:
            if unique_violation(error):
                raise AlreadyExists(f"a source named {name!r} already exists") from error
            raise
        return pb.CreateSourceResponse(source=convert.source(src))

    async def GetSource(self, request: pb.GetSourceRequest, context: Ctx) -> pb.GetSourceResponse:
        """Return a source."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, request.source_id, caller.workspace_id, "source"
            )
        return pb.GetSourceResponse(source=convert.source(src))

    async def ListSources(
        self, request: pb.ListSourcesRequest, context: Ctx
    ) -> pb.ListSourcesResponse:
        """List the workspace's sources."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            rows, token = await self.store.page(
                s,
                select(Source)
                .where(Source.workspace_id == caller.workspace_id)
                .order_by(col(Source.created_at), col(Source.id)),
                size,
                request.page_token,
            )
        return pb.ListSourcesResponse(
            sources=[convert.source(r) for r in rows], next_page_token=token
        )

    async def RotateWriteKey(
        self, request: pb.RotateWriteKeyRequest, context: Ctx
    ) -> pb.RotateWriteKeyResponse:
        """Replace a source's write key."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, request.source_id, caller.workspace_id, "source"
            )
            require(
                caller.can_admin_source(src.id), "rotate this source's write key (Source Admin)"
            )
            src.write_key = new_write_key()
            s.add(src)
            await audit(
                self.store,
                s,
                caller,
                "source.rotate_write_key",
                "source",
                src.id,
            )
            await self.store.bump_config(s)
        return pb.RotateWriteKeyResponse(source=convert.source(src))

    async def DeleteSource(
        self, request: pb.DeleteSourceRequest, context: Ctx
    ) -> pb.DeleteSourceResponse:
        """Delete a source without instances."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, request.source_id, caller.workspace_id, "source"
            )
            require(caller.can_admin_source(src.id), "delete this source (Source Admin)")
            if await self.store.count(s, select(Instance).where(Instance.source_id == src.id)):
                raise FailedPrecondition("the source has instances; delete them first")
            await s.delete(src)
            await audit(
                self.store,
                s,
                caller,
                "source.delete",
                "source",
                src.id,
                {"name": src.name},
            )
            await self.store.bump_config(s)
        return pb.DeleteSourceResponse()

    async def _readable_function(self, s, caller: Caller, function_id: str) -> Function:
        fn = await self.store.get_in_workspace(
            s, Function, function_id, caller.workspace_id, "function"
        )
        require(caller.can_read_function(fn.id), "read this function")
        return fn

    async def CreateFunction(
        self, request: pb.CreateFunctionRequest, context: Ctx
    ) -> pb.CreateFunctionResponse:
        """Create a function and its first version."""
        caller = await self.authn.caller(context)
        require(
            caller.can_write_function(None),
            "create functions (Workspace Owner or Functions Admin of all functions)",
        )
        name = check_name("name", request.name)
        schema = check_setting_definitions(request.settings)
        await asyncio.to_thread(check_code, request.code, self.deps.check_syntax)
        try:
            async with self.store.transaction() as s:
                fn = Function(
                    id=new_id("fn"),
                    workspace_id=caller.workspace_id,
                    name=name,
                    description=request.description,
                    created_at=now(),
                    updated_at=now(),
                )
                s.add(fn)
                await s.flush()
                ver = self._new_version(fn, request.code, schema, caller.email)
                s.add(ver)
                await audit(
                    self.store,
                    s,
                    caller,
                    "function.create",
                    "function",
                    fn.id,
                    {"name": name, "version_id": ver.id, "version": ver.number},
                )
        except IntegrityError as error:
            if unique_violation(error):
                raise AlreadyExists(f"a function named {name!r} already exists") from error
            raise
        return pb.CreateFunctionResponse(
            function=convert.function(fn), version=convert.version(ver)
        )

    @staticmethod
    def _new_version(fn: Function, code: str, schema: list, author: str) -> FunctionVersion:
        ver = FunctionVersion(
            id=new_id("ver"),
            function_id=fn.id,
            number=fn.latest_version_number + 1,
            code=code,
            settings=schema,
            created_by=author,
            created_at=now(),
        )
        fn.latest_version_id = ver.id
        fn.latest_version_number = ver.number
        fn.updated_at = ver.created_at
        return ver

    async def GetFunction(
        self, request: pb.GetFunctionRequest, context: Ctx
    ) -> pb.GetFunctionResponse:
        """Return a function with its newest version."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            fn = await self._readable_function(s, caller, request.function_id)
            ver = await self.store.get(s, FunctionVersion, fn.latest_version_id, "version")
        return pb.GetFunctionResponse(
            function=convert.function(fn), latest_version=convert.version(ver)
        )

    async def ListFunctions(
        self, request: pb.ListFunctionsRequest, context: Ctx
    ) -> pb.ListFunctionsResponse:
        """List the functions the caller may read."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        query = select(Function).where(Function.workspace_id == caller.workspace_id)
        if not caller.can_read_function(None):
            readable = [f for g in caller.grants for f in g.function_ids]
            query = query.where(col(Function.id).in_(readable))
        async with self.store.transaction() as s:
            rows, token = await self.store.page(
                s,
                query.order_by(col(Function.created_at), col(Function.id)),
                size,
                request.page_token,
            )
        return pb.ListFunctionsResponse(
            functions=[convert.function(r) for r in rows], next_page_token=token
        )

    async def DeleteFunction(
        self, request: pb.DeleteFunctionRequest, context: Ctx
    ) -> pb.DeleteFunctionResponse:
        """Delete a function without instances."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            fn = await self.store.get_in_workspace(
                s, Function, request.function_id, caller.workspace_id, "function"
            )
            require(caller.can_write_function(fn.id), "delete this function (Functions Admin)")
            if await self.store.count(s, select(Instance).where(Instance.function_id == fn.id)):
                raise FailedPrecondition("the function has instances; delete them first")
            await s.delete(fn)
            await audit(
                self.store,
                s,
                caller,
                "function.delete",
                "function",
                fn.id,
                {"name": fn.name},
            )
        return pb.DeleteFunctionResponse()

    async def ListFunctionVersions(
        self, request: pb.ListFunctionVersionsRequest, context: Ctx
    ) -> pb.ListFunctionVersionsResponse:
        """List a function's versions, newest first."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            fn = await self._readable_function(s, caller, request.function_id)
            rows, token = await self.store.page(
                s,
                select(FunctionVersion)
                .where(FunctionVersion.function_id == fn.id)
                .order_by(col(FunctionVersion.number).desc()),
                size,
                request.page_token,
            )
        return pb.ListFunctionVersionsResponse(
            versions=[convert.version(v, with_code=False) for v in rows], next_page_token=token
        )

    async def GetFunctionVersion(
        self, request: pb.GetFunctionVersionRequest, context: Ctx
    ) -> pb.GetFunctionVersionResponse:
        """Return one version with its code (also to the data plane's service token)."""
        if self.authn.is_service(context):  # an executor replaying on a chosen version
            async with self.store.transaction() as s:
                ver = await self.store.get(s, FunctionVersion, request.version_id, "version")
            return pb.GetFunctionVersionResponse(version=convert.version(ver))
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            ver = await s.get(FunctionVersion, request.version_id)
            fn = await s.get(Function, ver.function_id) if ver else None
            if ver is None or fn is None or fn.workspace_id != caller.workspace_id:
                raise NotFound("version", request.version_id)
            require(caller.can_read_function(fn.id), "read this function")
        return pb.GetFunctionVersionResponse(version=convert.version(ver))
