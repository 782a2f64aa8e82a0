"""Registry RPCs of sources and their write keys."""

from __future__ import annotations

import secrets as pysecrets

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common import names
from services.common.errors import AlreadyExists, FailedPrecondition
from services.registry import convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.models import Instance, Source
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import check_name, check_page_size, check_update_mask

Ctx = grpc.aio.ServicerContext


def new_write_key() -> str:
    """Make a new source write key."""
    return pysecrets.token_urlsafe(24)


def taken(name: str) -> AlreadyExists:
    """Describe a taken source display name."""
    return AlreadyExists(f"a source named {name!r} already exists; pick another display_name")


class SourceRpcs:
    """Sources: create, get, list, update, rotate the write key, delete."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def CreateSource(
        self, request: pb.CreateSourceRequest, context: Ctx
    ) -> pb.CreateSourceResponse:
        """Create a source with a new write key."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        require(
            caller.can_admin_source(None),
            "create sources (Workspace Owner or Source Admin of all sources)",
        )
        name = check_name("source.display_name", request.source.display_name)
        key = request_key(caller.workspace_id, caller.member_id, "CreateSource", request)

        async def create() -> pb.CreateSourceResponse:
            try:
                return await self._create(caller, name, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise taken(name) from error
                raise

        return await self.deps.idempotency.once(key, pb.CreateSourceResponse, create)

    async def _create(
        self, caller: Caller, name: str, key: RequestKey | None
    ) -> pb.CreateSourceResponse:
        async with self.store.transaction() as s:
            await self.deps.room_for_source(s, caller.workspace_id)
            src = Source(
                id=new_id("src"),
                workspace_id=caller.workspace_id,
                name=name,
                write_key=new_write_key(),
                created_at=now(),
            )
            s.add(src)
            await s.flush()
            await self.deps.audit(s, caller, "source.create", "source", src.id, {"name": name})
            await self.deps.change_config(s, caller, sources=[src.id])
            response = pb.CreateSourceResponse(source=convert.source(src, with_write_key=True))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def _source(
        self, s, caller: Caller, field: str, name: str, *, lock: bool = False
    ) -> Source:
        source_id = names.parse(field, name, names.SOURCE, caller.workspace_id)
        return await self.store.get_in_workspace(
            s, Source, source_id, caller.workspace_id, "source", lock=lock, name=name
        )

    async def GetSource(self, request: pb.GetSourceRequest, context: Ctx) -> pb.GetSourceResponse:
        """Return a source."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            src = await self._source(s, caller, "name", request.name)
        return pb.GetSourceResponse(
            source=convert.source(src, with_write_key=caller.can_admin_source(src.id))
        )

    async def ListSources(
        self, request: pb.ListSourcesRequest, context: Ctx
    ) -> pb.ListSourcesResponse:
        """List the workspace's sources."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
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
            sources=[convert.source(r, with_write_key=caller.can_admin_source(r.id)) for r in rows],
            next_page_token=token,
        )

    async def UpdateSource(
        self, request: pb.UpdateSourceRequest, context: Ctx
    ) -> pb.UpdateSourceResponse:
        """Rename a source."""
        caller = await self.authn.caller(context)
        paths = check_update_mask(request.update_mask, frozenset({"display_name"}))
        display_name = check_name("source.display_name", request.source.display_name)
        try:
            async with self.store.transaction() as s:
                src = await self._source(s, caller, "source.name", request.source.name, lock=True)
                require(caller.can_admin_source(src.id), "rename this source (Source Admin)")
                check_etag("source", src.id, src.revision, request.source.etag)
                before = src.name
                if "display_name" in paths:
                    src.name = display_name
                src.revision += 1
                s.add(src)
                await s.flush()
                await self.deps.audit(
                    s,
                    caller,
                    "source.update",
                    "source",
                    src.id,
                    {"fields": sorted(paths), "before": before, "after": src.name},
                )
        except IntegrityError as error:
            if unique_violation(error):
                raise taken(display_name) from error
            raise
        return pb.UpdateSourceResponse(source=convert.source(src, with_write_key=True))

    async def RotateWriteKey(
        self, request: pb.RotateWriteKeyRequest, context: Ctx
    ) -> pb.RotateWriteKeyResponse:
        """Replace a source's write key."""
        caller = await self.authn.caller(context)
        source_id = names.parse("name", request.name, names.SOURCE, caller.workspace_id)
        # Before a retry is answered: one who no longer may gets no key of it.
        require(caller.can_admin_source(source_id), "rotate this source's write key (Source Admin)")
        key = request_key(caller.workspace_id, caller.member_id, "RotateWriteKey", request)
        return await self.deps.idempotency.once(
            key, pb.RotateWriteKeyResponse, lambda: self._rotate(caller, request, key)
        )

    async def _rotate(
        self, caller: Caller, request: pb.RotateWriteKeyRequest, key: RequestKey | None
    ) -> pb.RotateWriteKeyResponse:
        async with self.store.transaction() as s:
            src = await self._source(s, caller, "name", request.name, lock=True)
            check_etag("source", src.id, src.revision, request.etag)
            src.write_key = new_write_key()
            src.revision += 1
            s.add(src)
            await self.deps.audit(s, caller, "source.rotate_write_key", "source", src.id)
            await self.deps.change_config(s, caller, sources=[src.id])
            response = pb.RotateWriteKeyResponse(source=convert.source(src, with_write_key=True))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def DeleteSource(
        self, request: pb.DeleteSourceRequest, context: Ctx
    ) -> pb.DeleteSourceResponse:
        """Delete a source without instances."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            src = await self._source(s, caller, "name", request.name, lock=True)
            require(caller.can_admin_source(src.id), "delete this source (Source Admin)")
            check_etag("source", src.id, src.revision, request.etag)
            if await self.store.count(s, select(Instance).where(Instance.source_id == src.id)):
                raise FailedPrecondition("the source has instances; delete them first")
            await s.delete(src)
            await self.deps.audit(s, caller, "source.delete", "source", src.id, {"name": src.name})
            await self.deps.change_config(s, caller, sources=[src.id])
        return pb.DeleteSourceResponse()
