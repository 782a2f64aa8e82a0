"""Registry RPCs of workspaces, members and tokens."""

from __future__ import annotations

from datetime import timedelta

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.registry import auth, convert
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps, audit
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.models import Function, Member, Source, Token, Workspace
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import check_name, check_page_size, required

Ctx = grpc.aio.ServicerContext


FUNCTION_ROLES = (auth.FUNCTIONS_ADMIN, auth.FUNCTIONS_READ_ONLY)


def grants_from_proto(grants: list[res.RoleGrant] | object) -> tuple[auth.Grant, ...]:
    """Validate the shape of a request's role grants (ids are checked by `check_grant_ids`)."""
    out = []
    violations = []
    for i, g in enumerate(grants):  # type: ignore[arg-type]
        if g.role not in (
            auth.OWNER,
            auth.FUNCTIONS_ADMIN,
            auth.FUNCTIONS_READ_ONLY,
            auth.SOURCE_ADMIN,
        ):
            violations.append(FieldViolation(f"roles[{i}].role", "must be a known role"))
        if g.function_ids and g.role not in FUNCTION_ROLES:
            violations.append(
                FieldViolation(
                    f"roles[{i}].function_ids",
                    "only Functions Admin and Functions Read-only grants list functions",
                )
            )
        if g.source_ids and g.role != auth.SOURCE_ADMIN:
            violations.append(
                FieldViolation(f"roles[{i}].source_ids", "only Source Admin grants list sources")
            )
        out.append(auth.Grant(g.role, tuple(g.function_ids), tuple(g.source_ids)))
    if not out:
        violations.append(FieldViolation("roles", "give at least one role"))
    if violations:
        raise InvalidArgument("invalid roles", violations)
    return tuple(out)


async def check_grant_ids(s, workspace_id: str, grants: tuple[auth.Grant, ...]) -> None:
    """Refuse grants naming functions or sources the workspace does not have."""
    violations = []
    for i, g in enumerate(grants):
        for j, function_id in enumerate(g.function_ids):
            fn = await s.get(Function, function_id)
            if fn is None or fn.workspace_id != workspace_id:
                violations.append(
                    FieldViolation(
                        f"roles[{i}].function_ids[{j}]",
                        f"no function {function_id!r} in this workspace",
                    )
                )
        for j, source_id in enumerate(g.source_ids):
            src = await s.get(Source, source_id)
            if src is None or src.workspace_id != workspace_id:
                violations.append(
                    FieldViolation(
                        f"roles[{i}].source_ids[{j}]", f"no source {source_id!r} in this workspace"
                    )
                )
    if violations:
        raise InvalidArgument("roles name functions or sources that do not exist", violations)


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
        key = request_key(caller.workspace_id, "CreateWorkspace", request)

        async def create() -> pb.CreateWorkspaceResponse:
            try:
                return await self._create_workspace(caller, name, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise AlreadyExists(f"a workspace named {name!r} already exists") from error
                raise

        return await self.deps.idempotency.once(key, pb.CreateWorkspaceResponse, create)

    async def _create_workspace(
        self, caller: Caller, name: str, key: RequestKey | None
    ) -> pb.CreateWorkspaceResponse:
        secret = auth.new_secret()
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
            response = pb.CreateWorkspaceResponse(
                workspace=convert.workspace(ws), owner=convert.member(owner), token=secret
            )
            await self.deps.idempotency.save(s, key, response)
        return response

    async def GetWorkspace(
        self, request: pb.GetWorkspaceRequest, context: Ctx
    ) -> pb.GetWorkspaceResponse:
        """Return the caller's workspace."""
        caller = await self.authn.caller(context)
        required("workspace_id", request.workspace_id)
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
        key = request_key(caller.workspace_id, "CreateMember", request)

        async def create() -> pb.CreateMemberResponse:
            try:
                return await self._create_member(caller, email, grants, key)
            except IntegrityError as error:
                if unique_violation(error):
                    raise AlreadyExists(f"a member {email!r} already exists") from error
                raise

        return await self.deps.idempotency.once(key, pb.CreateMemberResponse, create)

    async def _create_member(
        self, caller: Caller, email: str, grants: tuple[auth.Grant, ...], key: RequestKey | None
    ) -> pb.CreateMemberResponse:
        async with self.store.transaction() as s:
            await check_grant_ids(s, caller.workspace_id, grants)
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
            await s.flush()
            response = pb.CreateMemberResponse(member=convert.member(member))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Ctx
    ) -> pb.ListMembersResponse:
        """List the workspace's members."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "list members (Workspace Owner only)")
        size = check_page_size(request.page_size)
        async with self.store.transaction() as s:
            rows, token = await self.deps.pages.page(
                s,
                "ListMembers",
                caller.workspace_id,
                request,
                select(Member).where(Member.workspace_id == caller.workspace_id),
                (col(Member.created_at), col(Member.id)),
                size,
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
        required("member_id", request.member_id)
        grants = grants_from_proto(request.roles)
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, request.member_id, caller.workspace_id, "member", lock=True
            )
            check_etag("member", member.id, member.revision, request.etag)
            await check_grant_ids(s, caller.workspace_id, grants)
            if not any(g.role == auth.OWNER for g in grants) and not await self._owners_left(
                s, caller.workspace_id, member.id
            ):
                raise FailedPrecondition(
                    "the workspace would have no owner left; add another owner first"
                )
            before = member.roles
            member.roles = auth.grants_to_json(grants)
            member.revision += 1
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
        required("member_id", request.member_id)
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, request.member_id, caller.workspace_id, "member", lock=True
            )
            check_etag("member", member.id, member.revision, request.etag)
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
        key = request_key(caller.workspace_id, "CreateToken", request)
        return await self.deps.idempotency.once(
            key, pb.CreateTokenResponse, lambda: self._create_token(caller, request, member_id, key)
        )

    async def _create_token(
        self,
        caller: Caller,
        request: pb.CreateTokenRequest,
        member_id: str,
        key: RequestKey | None,
    ) -> pb.CreateTokenResponse:
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
            response = pb.CreateTokenResponse(token=convert.token(tok), secret=secret)
            await self.deps.idempotency.save(s, key, response)
        return response

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
            rows, token = await self.deps.pages.page(
                s,
                "ListTokens",
                caller.workspace_id,
                request,
                query,
                (col(Token.created_at), col(Token.id)),
                size,
            )
        return pb.ListTokensResponse(tokens=[convert.token(r) for r in rows], next_page_token=token)

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        """Revoke a token."""
        caller = await self.authn.caller(context)
        required("token_id", request.token_id)
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
