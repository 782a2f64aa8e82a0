"""Registry RPCs of functions and their versions (saves are in rpc_deploys.py)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common import names
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.instance_settings import with_settings, without_settings
from services.registry.models import Function, FunctionVersion, Instance
from services.registry.store import RegistryStore, new_id, now, unique_violation
from services.registry.validation import (
    check_code,
    check_description,
    check_name,
    check_page_size,
    check_setting_definitions,
    check_update_mask,
)

Ctx = grpc.aio.ServicerContext
# Instances a refused version deletion names at most.
RUNNING_NAMED = 5


def taken(name: str) -> AlreadyExists:
    """Describe a taken function display name."""
    return AlreadyExists(f"a function named {name!r} already exists; pick another display_name")


def new_version(fn: Function, code: str, schema: list, author: str) -> FunctionVersion:
    """Make the function's next version and make it the latest."""
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


SavedResponse = TypeVar("SavedResponse", pb.CreateFunctionResponse, pb.SaveFunctionResponse)


def without_code(response: SavedResponse) -> SavedResponse:
    """A create's or save's response as its request record keeps it: without the version's
    code and settings definitions, which the version holds (counted in the workspace's
    quota), nor its deployed instances' settings (see `without_settings`). Kept in each
    record too, for a day, a create-and-delete loop stored 2.5 bytes a byte of them outside
    the quota."""
    kept = type(response)()
    kept.CopyFrom(response)
    kept.version.ClearField("code")
    kept.version.ClearField("settings")
    if isinstance(kept, pb.SaveFunctionResponse):
        without_settings(kept.deployed_instances)
    return kept


async def with_code(store: RegistryStore, response: SavedResponse) -> SavedResponse:
    """Give a create's or save's response (a retry's, from its record) its version's code and
    settings definitions, and its deployed instances' settings, again; a version deleted
    since has none to give."""
    if not response.version.code:
        async with store.transaction() as s:
            ver = await s.get(FunctionVersion, names.last(response.version.name))
        if ver is not None:
            response.version.CopyFrom(convert.version(ver, response.version.name.split("/")[1]))
    if isinstance(response, pb.SaveFunctionResponse):
        await with_settings(store, response.deployed_instances)
    return response


async def function_of(store, s, caller: Caller, field: str, name: str, *, lock=False) -> Function:
    """Load the function a name names in the caller's workspace."""
    function_id = names.parse(field, name, names.FUNCTION, caller.workspace_id)
    return await store.get_in_workspace(
        s, Function, function_id, caller.workspace_id, "function", lock=lock, name=name
    )


class FunctionRpcs:
    """Functions and versions: create, get, list, update, delete."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def _readable(self, s, caller: Caller, field: str, name: str) -> Function:
        fn = await function_of(self.store, s, caller, field, name)
        require(caller.can_read_function(fn.id), "read this function")
        return fn

    async def CreateFunction(
        self, request: pb.CreateFunctionRequest, context: Ctx
    ) -> pb.CreateFunctionResponse:
        """Create a function and its first version."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        require(
            caller.can_write_function(None),
            "create functions (Workspace Owner or Functions Admin of all functions)",
        )
        name = check_name("function.display_name", request.function.display_name)
        check_description("function.description", request.function.description)
        schema = check_setting_definitions(request.settings)
        await asyncio.to_thread(check_code, request.code, self.deps.check_syntax)
        key = request_key(caller.workspace_id, caller.member_id, "CreateFunction", request)

        async def create() -> pb.CreateFunctionResponse:
            try:
                return await self._create(caller, request, name, schema, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise taken(name) from error
                raise

        return await with_code(
            self.store, await self.deps.idempotency.once(key, pb.CreateFunctionResponse, create)
        )

    async def _create(
        self,
        caller: Caller,
        request: pb.CreateFunctionRequest,
        name: str,
        schema: list,
        key: RequestKey | None,
    ) -> pb.CreateFunctionResponse:
        async with self.store.transaction() as s:
            fn = Function(
                id=new_id("fn"),
                workspace_id=caller.workspace_id,
                name=name,
                description=request.function.description,
                created_at=now(),
                updated_at=now(),
            )
            await self.deps.room_for_code(s, caller.workspace_id, request.code, schema)
            s.add(fn)
            await s.flush()
            ver = new_version(fn, request.code, schema, caller.email)
            s.add(ver)
            await self.deps.audit(
                s,
                caller,
                "function.create",
                "function",
                fn.id,
                {"name": name, "version": names.version(caller.workspace_id, fn.id, ver.id)},
            )
            response = pb.CreateFunctionResponse(
                function=convert.function(fn), version=convert.version(ver, caller.workspace_id)
            )
            await self.deps.idempotency.save(s, key, without_code(response))
        return response

    async def GetFunction(
        self, request: pb.GetFunctionRequest, context: Ctx
    ) -> pb.GetFunctionResponse:
        """Return a function with its newest version."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            fn = await self._readable(s, caller, "name", request.name)
            ver = await self.store.get(s, FunctionVersion, fn.latest_version_id, "version")
        return pb.GetFunctionResponse(
            function=convert.function(fn), latest_version=convert.version(ver, fn.workspace_id)
        )

    async def ListFunctions(
        self, request: pb.ListFunctionsRequest, context: Ctx
    ) -> pb.ListFunctionsResponse:
        """List the functions the caller may read."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
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

    async def UpdateFunction(
        self, request: pb.UpdateFunctionRequest, context: Ctx
    ) -> pb.UpdateFunctionResponse:
        """Change a function's display name or description."""
        caller = await self.authn.caller(context)
        paths = check_update_mask(request.update_mask, frozenset({"display_name", "description"}))
        new = request.function
        display_name = (
            check_name("function.display_name", new.display_name) if "display_name" in paths else ""
        )
        if "description" in paths:
            check_description("function.description", new.description)
        try:
            async with self.store.transaction() as s:
                fn = await function_of(self.store, s, caller, "function.name", new.name, lock=True)
                require(caller.can_write_function(fn.id), "change this function (Functions Admin)")
                check_etag("function", fn.id, fn.revision, new.etag)
                if "display_name" in paths:
                    fn.name = display_name
                if "description" in paths:
                    fn.description = new.description
                fn.revision += 1
                fn.updated_at = now()
                s.add(fn)
                await s.flush()
                await self.deps.audit(
                    s,
                    caller,
                    "function.update",
                    "function",
                    fn.id,
                    {"fields": sorted(paths)},
                )
                if "display_name" in paths:
                    # The integrations-object key holds the display name: the data plane
                    # follows (a description is the registry's alone).
                    await self.deps.change_config(s, caller, functions=[fn.id])
        except IntegrityError as error:
            if unique_violation(error):
                raise taken(display_name) from error
            raise
        return pb.UpdateFunctionResponse(function=convert.function(fn))

    async def DeleteFunction(
        self, request: pb.DeleteFunctionRequest, context: Ctx
    ) -> pb.DeleteFunctionResponse:
        """Delete a function without instances."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            fn = await function_of(self.store, s, caller, "name", request.name, lock=True)
            require(caller.can_write_function(fn.id), "delete this function (Functions Admin)")
            check_etag("function", fn.id, fn.revision, request.etag)
            if await self.store.count(s, select(Instance).where(Instance.function_id == fn.id)):
                raise FailedPrecondition("the function has instances; delete them first")
            await s.delete(fn)
            await self.deps.audit(
                s, caller, "function.delete", "function", fn.id, {"name": fn.name}
            )
        return pb.DeleteFunctionResponse()

    async def DeleteFunctionVersion(
        self, request: pb.DeleteFunctionVersionRequest, context: Ctx
    ) -> pb.DeleteFunctionVersionResponse:
        """Delete a version that is not the latest and that no instance runs."""
        caller = await self.authn.caller(context)
        function_id, version_id = names.parse_version("name", request.name, caller.workspace_id)
        async with self.store.transaction() as s:
            # Locked as saves and deploys lock it: the latest version and the instances
            # running a version do not change under the checks below.
            fn = await self.store.get_in_workspace(
                s,
                Function,
                function_id,
                caller.workspace_id,
                "version",
                lock=True,
                name=request.name,
            )
            require(
                caller.can_write_function(fn.id),
                "delete this function's versions (Functions Admin)",
            )
            ver = await s.get(FunctionVersion, version_id, with_for_update=True)
            if ver is None or ver.function_id != fn.id:
                raise NotFound("version", request.name)
            if fn.latest_version_id == ver.id:
                raise FailedPrecondition(
                    f"version {ver.number} is the function's latest: new instances run it; "
                    "save a newer one first (SaveFunction)"
                )
            running = (
                await s.exec(
                    select(Instance.id)
                    .where(Instance.version_id == ver.id)
                    .order_by(col(Instance.id))
                    .limit(RUNNING_NAMED + 1)
                )
            ).all()
            if running:
                shown = ", ".join(
                    names.INSTANCE.name(caller.workspace_id, i) for i in running[:RUNNING_NAMED]
                )
                more = " and more" if len(running) > RUNNING_NAMED else ""
                raise FailedPrecondition(
                    f"version {ver.number} runs on instances {shown}{more}: deploy them to "
                    "another version first (DeployInstance)"
                )
            await s.delete(ver)
            await self.deps.audit(
                s,
                caller,
                "function.version_delete",
                "function",
                fn.id,
                {"version": request.name, "number": ver.number},
            )
        return pb.DeleteFunctionVersionResponse()

    async def ListFunctionVersions(
        self, request: pb.ListFunctionVersionsRequest, context: Ctx
    ) -> pb.ListFunctionVersionsResponse:
        """List a function's versions, newest first."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            fn = await self._readable(s, caller, "parent", request.parent)
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
            versions=[convert.version(v, fn.workspace_id, with_code=False) for v in rows],
            next_page_token=token,
        )

    async def GetFunctionVersion(
        self, request: pb.GetFunctionVersionRequest, context: Ctx
    ) -> pb.GetFunctionVersionResponse:
        """Return one version with its code (also to the data plane's service token)."""
        service = self.authn.is_service(context)
        caller = None if service else await self.authn.caller(context)
        function_id, version_id = names.parse_version(
            "name", request.name, caller.workspace_id if caller else None
        )
        async with self.store.transaction() as s:
            ver = await s.get(FunctionVersion, version_id)
            fn = await s.get(Function, function_id)
            workspace_id = request.name.split("/")[1]
            if (
                ver is None
                or fn is None
                or ver.function_id != fn.id
                or fn.workspace_id != workspace_id
            ):
                raise NotFound("version", request.name)
            if caller is not None:
                require(caller.can_read_function(fn.id), "read this function")
        return pb.GetFunctionVersionResponse(version=convert.version(ver, fn.workspace_id))
