"""Registry RPCs of workspaces, and WhoAmI."""

from __future__ import annotations

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common import names
from services.common.errors import AlreadyExists, NotFound
from services.registry import auth, convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.idempotency import RequestKey, request_key
from services.registry.models import Member, Token, Workspace
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import check_name, check_page_size

Ctx = grpc.aio.ServicerContext


class WorkspaceRpcs:
    """Workspaces: create, get, list; and who the caller is."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def CreateWorkspace(
        self, request: pb.CreateWorkspaceRequest, context: Ctx
    ) -> pb.CreateWorkspaceResponse:
        """Create a workspace owned by the (bootstrap) caller."""
        caller = await self.authn.caller(context)
        require(caller.bootstrap, "create workspaces (only the bootstrap administrator may)")
        name = check_name("workspace.display_name", request.workspace.display_name)
        email = (
            check_name("owner_email", request.owner_email) if request.owner_email else caller.email
        )
        key = request_key(caller.workspace_id, caller.member_id, "CreateWorkspace", request)

        async def create() -> pb.CreateWorkspaceResponse:
            try:
                return await self._create(caller, name, email, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise AlreadyExists(
                        f"a workspace named {name!r} already exists; pick another display_name"
                    ) from error
                raise

        return await self.deps.idempotency.once(key, pb.CreateWorkspaceResponse, create)

    async def _create(
        self, caller: Caller, name: str, email: str, key: RequestKey | None
    ) -> pb.CreateWorkspaceResponse:
        secret = auth.new_secret()
        async with self.store.transaction() as s:
            ws = Workspace(id=new_id("ws"), name=name, created_at=now())
            s.add(ws)
            await s.flush()
            owner = Member(
                id=new_id("mem"),
                workspace_id=ws.id,
                email=email,
                roles=auth.grants_to_json((auth.Grant(auth.OWNER),)),
                created_at=now(),
            )
            s.add(owner)
            await s.flush()
            s.add(
                Token(
                    id=new_id("tok"),
                    member_id=owner.id,
                    name=f"owner of {name}",
                    prefix=secret[:8],
                    secret_hash=auth.hash_secret(secret),
                    created_at=now(),
                )
            )
            self.store.audit(
                s,
                workspace_id=ws.id,
                actor=owner,
                action="workspace.create",
                resource_type="workspace",
                resource_id=ws.id,
                details={"name": name},
            )
            await self.deps.change_config(s, caller, workspaces=[ws.id])
            response = pb.CreateWorkspaceResponse(
                workspace=convert.workspace(ws), owner=convert.member(owner), token=secret
            )
            await self.deps.idempotency.save(s, key, response)
        return response

    async def GetWorkspace(
        self, request: pb.GetWorkspaceRequest, context: Ctx
    ) -> pb.GetWorkspaceResponse:
        """Return the caller's workspace (any, to the bootstrap administrator)."""
        caller = await self.authn.caller(context)
        workspace_id = names.parse_workspace("name", request.name)
        if workspace_id != caller.workspace_id and not caller.bootstrap:
            raise NotFound("workspace", request.name)
        async with self.store.transaction() as s:
            ws = await s.get(Workspace, workspace_id)
        if ws is None:
            raise NotFound("workspace", request.name)
        return pb.GetWorkspaceResponse(workspace=convert.workspace(ws))

    async def ListWorkspaces(
        self, request: pb.ListWorkspacesRequest, context: Ctx
    ) -> pb.ListWorkspacesResponse:
        """List the caller's workspace (every workspace, to the bootstrap administrator)."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        query = select(Workspace)
        if not caller.bootstrap:
            query = query.where(Workspace.id == caller.workspace_id)
        async with self.store.transaction() as s:
            rows, token = await self.deps.pages.page(
                s,
                "ListWorkspaces",
                caller.member_id,
                request,
                query,
                (col(Workspace.created_at), col(Workspace.id)),
                size,
            )
        return pb.ListWorkspacesResponse(
            workspaces=[convert.workspace(w) for w in rows], next_page_token=token
        )

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: Ctx) -> pb.WhoAmIResponse:
        """Describe the caller."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            member = await self.store.get(s, Member, caller.member_id, "member")
            ws = await self.store.get(s, Workspace, caller.workspace_id, "workspace")
        return pb.WhoAmIResponse(
            member=convert.member(member),
            workspace=convert.workspace(ws),
            bootstrap_admin=caller.bootstrap,
        )
