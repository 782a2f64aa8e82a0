"""Registry RPCs of members and tokens."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import grpc
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.registry import auth, convert
from services.registry.access import BOOTSTRAP_TOKEN_NAME
from services.registry.auth import Caller, require
from services.registry.deps import RegistryDeps
from services.registry.etags import check as check_etag
from services.registry.idempotency import RequestKey, request_key
from services.registry.models import Function, Member, Source, Token
from services.registry.store import new_id, now, unique_violation
from services.registry.validation import check_name, check_page_size, check_update_mask

Ctx = grpc.aio.ServicerContext


FUNCTION_ROLES = (auth.FUNCTIONS_ADMIN, auth.FUNCTIONS_READ_ONLY)
ROLES = (auth.OWNER, *FUNCTION_ROLES, auth.SOURCE_ADMIN)
# Names one grant may list (none: all of the workspace's). A member's roles are read at every
# call it makes: 100,000 grants, or one naming a function 100,000 times, made each of its
# calls hold the registry 0.9 s, and a neighbour's calls wait seconds.
MAX_GRANT_NAMES = 1000


def grants_from_proto(
    grants: Iterable[res.RoleGrant], workspace_id: str, field: str
) -> tuple[auth.Grant, ...]:
    """Validate the shape of a request's role grants and read the names they list (the ids
    are checked to exist by `check_grant_ids`): each role once, each name once, at most
    MAX_GRANT_NAMES names a grant."""
    given = list(grants)
    if len(given) > len(ROLES):
        raise InvalidArgument.field(
            field, f"gives {len(given)} grants; give each role at most once ({len(ROLES)} roles)"
        )
    out = []
    violations = []
    for i, g in enumerate(given):
        at = f"{field}[{i}]"
        if g.role not in ROLES:
            violations.append(FieldViolation(f"{at}.role", "must be a known role"))
        elif any(other.role == g.role for other in given[:i]):
            violations.append(
                FieldViolation(f"{at}.role", "is granted twice: list all it covers in one grant")
            )
        if g.functions and g.role not in FUNCTION_ROLES:
            violations.append(
                FieldViolation(
                    f"{at}.functions",
                    "only Functions Admin and Functions Read-only grants list functions",
                )
            )
        if g.sources and g.role != auth.SOURCE_ADMIN:
            violations.append(
                FieldViolation(f"{at}.sources", "only Source Admin grants list sources")
            )
        listed = len(g.functions) + len(g.sources)
        if listed > MAX_GRANT_NAMES:
            violations.append(
                FieldViolation(
                    at,
                    f"lists {listed} names; at most {MAX_GRANT_NAMES:,} (list none to cover "
                    "all of the workspace's)",
                )
            )
            continue
        function_ids = _parse_ids(
            f"{at}.functions", g.functions, names.FUNCTION, workspace_id, violations
        )
        source_ids = _parse_ids(f"{at}.sources", g.sources, names.SOURCE, workspace_id, violations)
        out.append(auth.Grant(g.role, tuple(function_ids), tuple(source_ids)))
    if not given:
        violations.append(FieldViolation(field, "give at least one role"))
    if violations:
        raise InvalidArgument("invalid roles", violations)
    return tuple(out)


def _parse_ids(
    field: str,
    resource_names: Sequence[str],
    kind: names.Kind,
    workspace_id: str,
    violations: list[FieldViolation],
) -> list[str]:
    """Return the ids of a grant's resource names; add a violation for each bad one."""
    ids: dict[str, None] = {}
    for j, name in enumerate(resource_names):
        try:
            resource_id = names.parse(f"{field}[{j}]", name, kind, workspace_id)
        except InvalidArgument as error:
            violations += error.violations
        except NotFound:
            violations.append(FieldViolation(f"{field}[{j}]", f"no {kind.word} {name!r} here"))
        else:
            if resource_id in ids:
                violations.append(FieldViolation(f"{field}[{j}]", f"lists {name!r} again"))
            ids[resource_id] = None
    return list(ids)


def token_expiry(
    created: datetime, ttl: timedelta | None, calling_expiry: datetime | None
) -> datetime | None:
    """Return when a new token expires: after its ttl, and never after the token it is made with.

    Otherwise a leaked short-lived token (a CI job's) would mint a lasting one, and revoking
    or outwaiting the leaked token would not end the access it gave.
    """
    wanted = created + ttl if ttl is not None else None
    if calling_expiry is None:
        return wanted
    if wanted is None:
        return calling_expiry
    if wanted > calling_expiry:
        left = max(0, int((calling_expiry - created).total_seconds()))
        until = calling_expiry.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        raise InvalidArgument.field(
            "ttl",
            f"must be at most {left} seconds: the token you call with expires at {until}, and "
            "a token may not outlive the token it is made with; leave it unset to expire then",
        )
    return wanted


def _not_the_bootstrap_admin(caller: Caller, member: Member, what: str) -> None:
    """Refuse an owner acting for the bootstrap administrator, whose tokens may create
    workspaces, list every tenant and rotate the deployment's keys: that member's tokens
    and roles are its own to change (an owner of its workspace minted one and became it)."""
    if member.bootstrap and not caller.bootstrap:
        raise PermissionDenied(
            f"only the bootstrap administrator may {what}: its tokens act for the whole deployment"
        )


async def check_grant_ids(s, workspace_id: str, grants: tuple[auth.Grant, ...], field: str) -> None:
    """Refuse grants naming functions or sources the workspace does not have."""
    violations = []
    for i, g in enumerate(grants):
        for j, function_id in enumerate(g.function_ids):
            fn = await s.get(Function, function_id)
            if fn is None or fn.workspace_id != workspace_id:
                violations.append(
                    FieldViolation(
                        f"{field}[{i}].functions[{j}]",
                        f"no function {names.FUNCTION.name(workspace_id, function_id)!r} "
                        "in this workspace",
                    )
                )
        for j, source_id in enumerate(g.source_ids):
            src = await s.get(Source, source_id)
            if src is None or src.workspace_id != workspace_id:
                violations.append(
                    FieldViolation(
                        f"{field}[{i}].sources[{j}]",
                        f"no source {names.SOURCE.name(workspace_id, source_id)!r} "
                        "in this workspace",
                    )
                )
    if violations:
        raise InvalidArgument("roles name functions or sources that do not exist", violations)


class AccessRpcs:
    """Members and tokens."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def _member(self, s, caller: Caller, field: str, name: str, *, lock=False) -> Member:
        member_id = names.parse(field, name, names.MEMBER, caller.workspace_id)
        return await self.store.get_in_workspace(
            s, Member, member_id, caller.workspace_id, "member", lock=lock, name=name
        )

    async def CreateMember(
        self, request: pb.CreateMemberRequest, context: Ctx
    ) -> pb.CreateMemberResponse:
        """Add a member with roles."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        require(caller.is_owner, "add members (Workspace Owner only)")
        email = check_name("member.email", request.member.email)
        grants = grants_from_proto(request.member.roles, caller.workspace_id, "member.roles")
        key = request_key(caller.workspace_id, caller.member_id, "CreateMember", request)

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
            await self.deps.room_for_member(s, caller.workspace_id)
            await check_grant_ids(s, caller.workspace_id, grants, "member.roles")
            member = Member(
                id=new_id("mem"),
                workspace_id=caller.workspace_id,
                email=email,
                roles=auth.grants_to_json(grants),
                created_at=now(),
            )
            s.add(member)
            await self.deps.audit(
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

    async def GetMember(self, request: pb.GetMemberRequest, context: Ctx) -> pb.GetMemberResponse:
        """Return a member (to an owner, or to the member itself)."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            member = await self._member(s, caller, "name", request.name)
        if member.id != caller.member_id:
            require(caller.is_owner, "read other members (Workspace Owner only)")
        return pb.GetMemberResponse(member=convert.member(member))

    async def ListMembers(
        self, request: pb.ListMembersRequest, context: Ctx
    ) -> pb.ListMembersResponse:
        """List the workspace's members."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
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
        """Count the workspace's owners but `excluding`. Changes that may take an owner away
        wait for each other here, to the end of their transactions: two owners demoting each
        other at once each counted the other, and left the workspace with none."""
        await s.exec(select(func.pg_advisory_xact_lock(func.hashtext(f"owners:{workspace_id}"))))
        members = (await s.exec(select(Member).where(Member.workspace_id == workspace_id))).all()
        return sum(
            1
            for m in members
            if m.id != excluding and any(g["role"] == auth.OWNER for g in m.roles)
        )

    async def UpdateMember(
        self, request: pb.UpdateMemberRequest, context: Ctx
    ) -> pb.UpdateMemberResponse:
        """Replace a member's roles."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "change roles (Workspace Owner only)")
        check_update_mask(request.update_mask, frozenset({"roles"}))
        new = request.member
        names.parse("member.name", new.name, names.MEMBER, caller.workspace_id)
        grants = grants_from_proto(new.roles, caller.workspace_id, "member.roles")
        async with self.store.transaction() as s:
            member = await self._member(s, caller, "member.name", new.name, lock=True)
            _not_the_bootstrap_admin(caller, member, "change the bootstrap administrator's roles")
            check_etag("member", member.id, member.revision, new.etag)
            await check_grant_ids(s, caller.workspace_id, grants, "member.roles")
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
            await self.deps.audit(
                s,
                caller,
                "member.update",
                "member",
                member.id,
                {"before": before, "after": member.roles},
            )
        return pb.UpdateMemberResponse(member=convert.member(member))

    async def DeleteMember(
        self, request: pb.DeleteMemberRequest, context: Ctx
    ) -> pb.DeleteMemberResponse:
        """Remove a member (its tokens go with it)."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "remove members (Workspace Owner only)")
        async with self.store.transaction() as s:
            member = await self._member(s, caller, "name", request.name, lock=True)
            check_etag("member", member.id, member.revision, request.etag)
            if member.bootstrap:
                raise FailedPrecondition("the bootstrap administrator cannot be removed")
            if not await self._owners_left(s, caller.workspace_id, member.id):
                raise FailedPrecondition(
                    "the workspace would have no owner left; add another owner first"
                )
            await s.delete(member)
            await self.deps.audit(
                s,
                caller,
                "member.delete",
                "member",
                member.id,
                {"email": member.email},
                spend=False,
            )
        return pb.DeleteMemberResponse()

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Ctx
    ) -> pb.CreateTokenResponse:
        """Create a token for the caller or, for an owner, for any member; one made with a
        token that expires expires by then too."""
        caller, calling = await self.authn.caller_and_token(context)
        names.parent("parent", request.parent, caller.workspace_id)
        member_id = (
            names.parse("token.member", request.token.member, names.MEMBER, caller.workspace_id)
            if request.token.member
            else caller.member_id
        )
        if member_id != caller.member_id:
            require(caller.is_owner, "create tokens for other members (Workspace Owner only)")
        display_name = request.token.display_name
        # Bounded as every display name is (15 MiB ones grew the database and then broke the
        # owner's ListTokens past gRPC's message limit).
        display_name = (
            check_name("token.display_name", display_name) if display_name.strip() else "token"
        )
        if display_name == BOOTSTRAP_TOKEN_NAME:
            raise InvalidArgument.field(
                "token.display_name",
                f"{display_name!r} names the token EVENTFN_BOOTSTRAP_TOKEN registers (replaced "
                "when the variable changes): pick another",
            )
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else None
        if ttl is not None and ttl <= timedelta(0):
            unset = "to expire with your token" if calling.expires_at else "for no expiry"
            raise InvalidArgument.field("ttl", f"must be positive; leave it unset {unset}")
        key = request_key(caller.workspace_id, caller.member_id, "CreateToken", request)
        # The cap is checked in the work, not before: a retry answers the first response even
        # once now + ttl has passed the calling token's expiry.
        return await self.deps.idempotency.once(
            key,
            pb.CreateTokenResponse,
            lambda: self._create_token(
                caller, request, member_id, display_name, ttl, calling.expires_at, key
            ),
        )

    async def _create_token(
        self,
        caller: Caller,
        request: pb.CreateTokenRequest,
        member_id: str,
        display_name: str,
        ttl: timedelta | None,
        calling_expiry: datetime | None,
        key: RequestKey | None,
    ) -> pb.CreateTokenResponse:
        created = now()
        expires_at = token_expiry(created, ttl, calling_expiry)
        secret = auth.new_secret()
        async with self.store.transaction() as s:
            member = await self.store.get_in_workspace(
                s, Member, member_id, caller.workspace_id, "member", name=request.token.member
            )
            _not_the_bootstrap_admin(
                caller, member, "create tokens for the bootstrap administrator"
            )
            await self.deps.room_for_token(s, member.id)
            tok = Token(
                id=new_id("tok"),
                member_id=member.id,
                name=display_name,
                prefix=secret[:8],
                secret_hash=auth.hash_secret(secret),
                created_at=created,
                expires_at=expires_at,
            )
            s.add(tok)
            self.deps.count_change(s, caller, own=True)  # then the audit counts nothing more
            await self.deps.audit(
                s,
                caller,
                "token.create",
                "token",
                tok.id,
                {"member": names.MEMBER.name(caller.workspace_id, member.id)},
            )
            response = pb.CreateTokenResponse(
                token=convert.token(tok, caller.workspace_id), secret=secret
            )
            await self.deps.idempotency.save(s, key, response)
        return response

    async def _token(self, s, caller: Caller, name: str) -> Token:
        """Load a token of the caller's workspace the caller may see."""
        token_id = names.parse("name", name, names.TOKEN, caller.workspace_id)
        tok = await s.get(Token, token_id)
        owner = await s.get(Member, tok.member_id) if tok else None
        if tok is None or owner is None or owner.workspace_id != caller.workspace_id:
            raise NotFound("token", name)
        if tok.member_id != caller.member_id:
            require(caller.is_owner, "see other members' tokens (Workspace Owner only)")
        return tok

    async def GetToken(self, request: pb.GetTokenRequest, context: Ctx) -> pb.GetTokenResponse:
        """Return a token (the caller's own, or any for an owner); never its secret."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            tok = await self._token(s, caller, request.name)
        return pb.GetTokenResponse(token=convert.token(tok, caller.workspace_id))

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Ctx
    ) -> pb.ListTokensResponse:
        """List the caller's tokens, or the workspace's for an owner."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
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
        return pb.ListTokensResponse(
            tokens=[convert.token(r, caller.workspace_id) for r in rows], next_page_token=token
        )

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Ctx
    ) -> pb.RevokeTokenResponse:
        """Revoke a token."""
        caller = await self.authn.caller(context)
        async with self.store.transaction() as s:
            tok = await self._token(s, caller, request.name)
            member = await s.get(Member, tok.member_id)
            assert member is not None  # `_token` found it
            _not_the_bootstrap_admin(caller, member, "revoke the bootstrap administrator's tokens")
            if tok.revoked_at is None:
                tok.revoked_at = now()
                s.add(tok)
                await self.deps.audit(
                    s,
                    caller,
                    "token.revoke",
                    "token",
                    tok.id,
                    {"member": names.MEMBER.name(caller.workspace_id, tok.member_id)},
                    spend=False,
                )
        return pb.RevokeTokenResponse(token=convert.token(tok, caller.workspace_id))
