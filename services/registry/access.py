"""Authentication of calls (bearer tokens) and the bootstrap administrator."""

from __future__ import annotations

import hmac
import logging

import grpc
from sqlmodel import select

from services.common.errors import PermissionDenied, Unauthenticated
from services.common.rpc import bearer_token
from services.registry import auth
from services.registry.models import Member, Token, Workspace
from services.registry.store import RegistryStore, new_id, now

log = logging.getLogger(__name__)

BOOTSTRAP_EMAIL = "admin"


class Authenticator:
    """Resolve the caller of an RPC from its bearer token."""

    def __init__(self, store: RegistryStore, *, service_token: str | None) -> None:
        self._store = store
        self._service_token = service_token

    def is_service(self, context: grpc.aio.ServicerContext) -> bool:
        """Tell whether the call carries the deployment's service token."""
        secret = bearer_token(context)
        if secret is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
        return bool(self._service_token) and hmac.compare_digest(
            secret.encode(), (self._service_token or "").encode()
        )

    async def caller(self, context: grpc.aio.ServicerContext) -> auth.Caller:
        """Return the member behind the call's token, or raise Unauthenticated."""
        caller, _ = await self.caller_and_token(context)
        return caller

    async def caller_and_token(
        self, context: grpc.aio.ServicerContext
    ) -> tuple[auth.Caller, Token]:
        """Return the member behind the call's token and that token, or raise Unauthenticated."""
        if self.is_service(context):
            raise PermissionDenied(
                "the service token is the data plane's own credential: it may call only "
                "WatchConfig, GetFunctionVersion and RecordInstanceAction"
            )
        secret = bearer_token(context) or ""
        found = await self._store.member_by_token_hash(auth.hash_secret(secret))
        if found is None:
            raise Unauthenticated(
                "the token is not valid; use one a member of the workspace created for you "
                "(`eventfn tokens create`), or the owner token its creation printed"
            )
        member, token = found
        if token.revoked_at is not None:
            raise Unauthenticated(
                "the token was revoked; use another of yours, or ask a Workspace Owner for one"
            )
        if token.expires_at is not None and token.expires_at <= now():
            raise Unauthenticated(
                "the token expired; use another of yours, or ask a Workspace Owner for one"
            )
        caller = auth.Caller(
            member_id=member.id,
            workspace_id=member.workspace_id,
            email=member.email,
            grants=auth.grants_from_json(member.roles),
            bootstrap=member.bootstrap,
        )
        return caller, token


# The name of the tokens EVENTFN_BOOTSTRAP_TOKEN registers, which no other token may take.
BOOTSTRAP_TOKEN_NAME = "bootstrap"


async def ensure_bootstrap(store: RegistryStore, *, workspace_name: str, secret: str) -> None:
    """Make sure the bootstrap administrator exists and `secret` is one of its tokens."""
    secret_hash = auth.hash_secret(secret)
    async with store.transaction() as session:
        admin = (await session.exec(select(Member).where(Member.bootstrap))).first()
        if admin is None:
            ws = (
                await session.exec(select(Workspace).where(Workspace.name == workspace_name))
            ).first()
            if ws is None:
                ws = Workspace(id=new_id("ws"), name=workspace_name, created_at=now())
                session.add(ws)
                await session.flush()
            admin = Member(
                id=new_id("mem"),
                workspace_id=ws.id,
                email=BOOTSTRAP_EMAIL,
                roles=auth.grants_to_json((auth.Grant(auth.OWNER),)),
                bootstrap=True,
                created_at=now(),
            )
            session.add(admin)
            await session.flush()
            store.audit(
                session,
                workspace_id=ws.id,
                actor=None,
                action="workspace.bootstrap",
                resource_type="workspace",
                resource_id=ws.id,
            )
        existing = (
            await session.exec(select(Token).where(Token.secret_hash == secret_hash))
        ).first()
        if existing is None:
            # A new EVENTFN_BOOTSTRAP_TOKEN replaces the one configured before: rotating it is
            # changing the variable (the old one kept working, for ever). Deleted, not revoked:
            # configured again (a rollback), it is registered anew, where a token an operator
            # revoked stays revoked.
            replaced = (
                await session.exec(
                    select(Token).where(
                        Token.member_id == admin.id, Token.name == BOOTSTRAP_TOKEN_NAME
                    )
                )
            ).all()
            for old in replaced:
                await session.delete(old)
            session.add(
                Token(
                    id=new_id("tok"),
                    member_id=admin.id,
                    name=BOOTSTRAP_TOKEN_NAME,
                    # None of it: an operator chose it, and the workspace's other owners see
                    # token prefixes (eight characters of a short one are half of it).
                    prefix="",
                    secret_hash=secret_hash,
                    created_at=now(),
                )
            )
            log.info(
                "bootstrap token registered for member %s%s",
                admin.id,
                f"; the {len(replaced)} configured before deleted" if replaced else "",
            )
