"""Registry RPCs of workspaces, members and tokens."""

from __future__ import annotations

from datetime import timedelta

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn.registry.v1 import registry_pb2 as pb
from eventfn.registry.v1 import resources_pb2 as res
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.registry import auth, convert
from services.registry.auth import require
from services.registry.deps import RegistryDeps, audit
from services.registry.models import Member, Token, Workspace
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import check_name, check_page_size

Ctx = grpc.aio.ServicerContext


def grants_from_proto(grants: list[res.RoleGrant] | object) -> tuple[auth.Grant, ...]:
    """Validate role grants of a request."""
    out = []
    for i, g in enumerate(grants):  # type: ignore[arg-type]
        if g.role not in (
            auth.OWNER,
            auth.FUNCTIONS_ADMIN,
            auth.FUNCTIONS_READ_ONLY,
            auth.SOURCE_ADMIN,
        ):
            raise InvalidArgument.field(f"roles[{i}].role", "must be a known role")
        out.append(auth.Grant(g.role, tuple(g.function_ids), tuple(g.source_ids)))
    if not out:
        raise InvalidArgument.field("roles", "give at least one role")
    return tuple(out)


class AccessRpcs:
    """Workspaces, members, tokens."""

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
        name = check_name("name", request.name)
        secret = auth.new_secret()
        try:
            async with self.store.transaction() as s:
                ws = Workspace(id=new_id("ws"), name=name, created_at=now())
                s.add(ws)
                await s.flush()
                owner = Member(
                    id=new_id("mem"),
                    workspace_id=ws.id,
                    email=caller.email,
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
                await self.store.bump_config(s)
        except IntegrityError as error:
            if unique_violation(error):
                raise AlreadyExists(f"a workspace named {name!r} already exists") from error
            raise
        return pb.CreateWorkspaceResponse(
            workspace=convert.workspace(ws), owner=convert.member(owner), token=secret
        )

    async def GetWorkspace(
        self, request: pb.GetWorkspaceRequest, context: Ctx
    ) -> pb.GetWorkspaceResponse:
        """Return the caller's workspace."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            ws = await self.store.get(s, Workspace, request.workspace_id, "workspace")
        if ws.id != caller.workspace_id:
            raise NotFound("workspace", request.workspace_id)
        return pb.GetWorkspaceResponse(workspace=convert.workspace(ws))

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

    async def CreateMember(
        self, request: pb.CreateMemberRequest, context: Ctx
    ) -> pb.CreateMemberResponse:
        """Add a member with roles."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "add members (Workspace Owner only)")
        email = check_name("email", request.email)
        grants = grants_from_proto(request.roles)
        try:
            async with self.store.transaction() as s:
                member = Member(
                    id=new_id("mem"),
                    workspace_id=caller.workspace_id,
                    email=email,
                    roles=auth.grants_to_json(grants),
                    created_at=now(),
                )
                s.add(member)
                await audit(
                    self.store,
                    s,
                    caller,
                    "member.create",
                    "member",
                    member.id,
                    {"email": email, "roles": member.roles},
                )
        except IntegrityError as error:
            if unique_violation(error):
                raise AlreadyExists(f"a member {email!r} already exists") from error
            raise
        return pb.CreateMemberResponse(member=convert.member(member))

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Ctx
    ) -> pb.ListMembersResponse:
        """List the workspace's members."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "list members (Workspace Owner only)")
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            rows, token = await self.store.page(
                s,
                select(Member)
                .where(Member.workspace_id == caller.workspace_id)
                .order_by(col(Member.created_at), col(Member.id)),
                size,
                request.page_token,
            )
        return pb.ListMembersResponse(
            members=[convert.member(r) for r in rows], next_page_token=token
        )

    async def _owners_left(self, s, workspace_id: str, excluding: str) -> int:
        members = (await s.exec(select(Member).where(Member.workspace_id == workspace_id))).all()
        return sum(
            1
            for m in members
            if m.id != excluding and any(g["role"] == auth.OWNER for g in m.roles)
        )

    async def UpdateMemberRoles(
        self, request: pb.UpdateMemberRolesRequest, context: Ctx
    ) -> pb.UpdateMemberRolesResponse:
        """Replace a member's roles."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "change roles (Workspace Owner only)")
        grants = grants_from_proto(request.roles)
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, request.member_id, caller.workspace_id, "member"
            )
            if not any(g.role == auth.OWNER for g in grants) and not await self._owners_left(
                s, caller.workspace_id, member.id
            ):
                raise FailedPrecondition(
                    "the workspace would have no owner left; add another owner first"
                )
            before = member.roles
            member.roles = auth.grants_to_json(grants)
            s.add(member)
            await audit(
                self.store,
                s,
                caller,
                "member.update_roles",
                "member",
                member.id,
                {"before": before, "after": member.roles},
            )
        return pb.UpdateMemberRolesResponse(member=convert.member(member))

    async def DeleteMember(
        self, request: pb.DeleteMemberRequest, context: Ctx
    ) -> pb.DeleteMemberResponse:
        """Remove a member (its tokens go with it)."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "remove members (Workspace Owner only)")
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, request.member_id, caller.workspace_id, "member"
            )
            if member.bootstrap:
                raise FailedPrecondition("the bootstrap administrator cannot be removed")
            if not await self._owners_left(s, caller.workspace_id, member.id):
                raise FailedPrecondition(
                    "the workspace would have no owner left; add another owner first"
                )
            await s.delete(member)
            await audit(
                self.store,
                s,
                caller,
                "member.delete",
                "member",
                member.id,
                {"email": member.email},
            )
        return pb.DeleteMemberResponse()

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Ctx
    ) -> pb.CreateTokenResponse:
        """Create a token for the caller or, for an owner, for any member."""
        caller = await self.authn.caller(context)
        member_id = request.member_id or caller.member_id
        if member_id != caller.member_id:
            require(caller.is_owner, "create tokens for other members (Workspace Owner only)")
        if request.ttl_seconds < 0:
            raise InvalidArgument.field("ttl_seconds", "must not be negative")
        secret = auth.new_secret()
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, member_id, caller.workspace_id, "member"
            )
            tok = Token(
                id=new_id("tok"),
                member_id=member.id,
                name=request.name or "token",
                prefix=secret[:8],
                secret_hash=auth.hash_secret(secret),
                created_at=now(),
                expires_at=now() + timedelta(seconds=request.ttl_seconds)
                if request.ttl_seconds
                else None,
            )
            s.add(tok)
            await audit(
                self.store,
                s,
                caller,
                "token.create",
                "token",
                tok.id,
                {"member_id": member.id},
            )
        return pb.CreateTokenResponse(token=convert.token(tok), secret=secret)

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Ctx
    ) -> pb.ListTokensResponse:
        """List the caller's tokens, or the workspace's for an owner."""
        caller = await self.authn.caller(context)
        size = check_page_size(request.page_size)
        query = select(Token).join(Member, col(Member.id) == col(Token.member_id))
        if caller.is_owner:
            query = query.where(Member.workspace_id == caller.workspace_id)
        else:
            query = query.where(Token.member_id == caller.member_id)
        async with self.store.transaction() as s:
            rows, token = await self.store.page(
                s, query.order_by(col(Token.created_at), col(Token.id)), size, request.page_token
            )
        return pb.ListTokensResponse(tokens=[convert.token(r) for r in rows], next_page_token=token)

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        """Revoke a token."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            tok = await self.store.get(s, Token, request.token_id, "token")
            owner = await s.get(Member, tok.member_id)
            if owner is None or owner.workspace_id != caller.workspace_id:
                raise NotFound("token", request.token_id)
            if tok.member_id != caller.member_id:
                require(caller.is_owner, "revoke other members' tokens (Workspace Owner only)")
            if tok.revoked_at is None:
                tok.revoked_at = now()
                s.add(tok)
                await audit(
                    self.store,
                    s,
                    caller,
                    "token.revoke",
                    "token",
                    tok.id,
                    {"member_id": tok.member_id},
                )
        return pb.RevokeTokenResponse(token=convert.token(tok))
