"""Registry RPCs of sources, functions and function versions."""

from __future__ import annotations

import asyncio
import secrets as pysecrets

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps, audit
from services.registry.etags import check as check_etag
from services.registry.idempotency import request_key
from services.registry.models import Function, FunctionVersion, Instance, Source
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import (
    check_code,
    check_name,
    check_page_size,
    check_setting_definitions,
    required,
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
        self.once = deps.idempotency.once

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
        key = request_key(caller.workspace_id, "CreateSource", request)

        async def create() -> pb.CreateSourceResponse:
            try:
                return await self._create_source(caller, name, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise AlreadyExists(f"a source named {name!r} already exists") from error
                raise

        return await self.once(key, pb.CreateSourceResponse, create)

    async def _create_source(self, caller: Caller, name: str, key) -> pb.CreateSourceResponse:
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
            response = pb.CreateSourceResponse(source=convert.source(src))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def GetSource(self, request: pb.GetSourceRequest, context: Ctx) -> pb.GetSourceResponse:
        """Return a source."""
        caller = await self.authn.caller(context)
        source_id = required("source_id", request.source_id)
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, source_id, caller.workspace_id, "source"
            )
        return pb.GetSourceResponse(source=convert.source(src))

    async def ListSources(
        self, request: pb.ListSourcesRequest, context: Ctx
    ) -> pb.ListSourcesResponse:
        """List the workspace's sources."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            rows, token = await self.deps.pages.page(
                s,
                "ListSources",
                caller.workspace_id,
                request,
                select(Source).where(Source.workspace_id == caller.workspace_id),
                (col(Source.created_at), col(Source.id)),
                size,
            )
        return pb.ListSourcesResponse(
            sources=[convert.source(r) for r in rows], next_page_token=token
        )

    async def RotateWriteKey(
        self, request: pb.RotateWriteKeyRequest, context: Ctx
    ) -> pb.RotateWriteKeyResponse:
        """Replace a source's write key."""
        caller = await self.authn.caller(context)
        source_id = required("source_id", request.source_id)
        key = request_key(caller.workspace_id, "RotateWriteKey", request)
        return await self.once(
            key, pb.RotateWriteKeyResponse, lambda: self._rotate(caller, source_id, request, key)
        )

    async def _rotate(
        self, caller: Caller, source_id: str, request: pb.RotateWriteKeyRequest, key
    ) -> pb.RotateWriteKeyResponse:
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, source_id, caller.workspace_id, "source", lock=True
            )
            require(
                caller.can_admin_source(src.id), "rotate this source's write key (Source Admin)"
            )
            check_etag("source", src.id, src.revision, request.etag)
            src.write_key = new_write_key()
            src.revision += 1
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
            response = pb.RotateWriteKeyResponse(source=convert.source(src))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def DeleteSource(
        self, request: pb.DeleteSourceRequest, context: Ctx
    ) -> pb.DeleteSourceResponse:
        """Delete a source without instances."""
        caller = await self.authn.caller(context)
        source_id = required("source_id", request.source_id)
        async with self.store.transaction() as s:
            src = await self.store.get_in_workspace(
                s, Source, source_id, caller.workspace_id, "source", lock=True
            )
            require(caller.can_admin_source(src.id), "delete this source (Source Admin)")
            check_etag("source", src.id, src.revision, request.etag)
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
        required("function_id", function_id)
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
        key = request_key(caller.workspace_id, "CreateFunction", request)

        async def create() -> pb.CreateFunctionResponse:
            try:
                return await self._create_function(caller, request, name, schema, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise AlreadyExists(f"a function named {name!r} already exists") from error
                raise

        return await self.once(key, pb.CreateFunctionResponse, create)

    async def _create_function(
        self, caller: Caller, request: pb.CreateFunctionRequest, name: str, schema: list, key
    ) -> pb.CreateFunctionResponse:
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
            response = pb.CreateFunctionResponse(
                function=convert.function(fn), version=convert.version(ver)
            )
            await self.deps.idempotency.save(s, key, response)
        return response

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
        readable = caller.readable_function_ids()
        if readable is not None:
            query = query.where(col(Function.id).in_(sorted(readable)))
        async with self.store.transaction() as s:
            rows, token = await self.deps.pages.page(
                s,
                "ListFunctions",
                caller.workspace_id,
                request,
                query,
                (col(Function.created_at), col(Function.id)),
                size,
            )
        return pb.ListFunctionsResponse(
            functions=[convert.function(r) for r in rows], next_page_token=token
        )

    async def DeleteFunction(
        self, request: pb.DeleteFunctionRequest, context: Ctx
    ) -> pb.DeleteFunctionResponse:
        """Delete a function without instances."""
        caller = await self.authn.caller(context)
        function_id = required("function_id", request.function_id)
        async with self.store.transaction() as s:
            fn = await self.store.get_in_workspace(
                s, Function, function_id, caller.workspace_id, "function", lock=True
            )
            require(caller.can_write_function(fn.id), "delete this function (Functions Admin)")
            check_etag("function", fn.id, fn.revision, request.etag)
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
            rows, token = await self.deps.pages.page(
                s,
                "ListFunctionVersions",
                caller.workspace_id,
                request,
                select(FunctionVersion).where(FunctionVersion.function_id == fn.id),
                (col(FunctionVersion.number),),
                size,
                descending=True,
            )
        return pb.ListFunctionVersionsResponse(
            versions=[convert.version(v, with_code=False) for v in rows], next_page_token=token
        )

    async def GetFunctionVersion(
        self, request: pb.GetFunctionVersionRequest, context: Ctx
    ) -> pb.GetFunctionVersionResponse:
        """Return one version with its code (also to the data plane's service token)."""
        required("version_id", request.version_id)
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
