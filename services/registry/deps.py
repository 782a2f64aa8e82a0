"""What every RPC group of the registry is built from, and the audit step they all take."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Text, cast, or_
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import ResourceExhausted
from services.common.workspace_budget import WorkspaceBudget
from services.registry.access import Authenticator
from services.registry.auth import Caller
from services.registry.idempotency import Idempotency
from services.registry.models import (
    AuditEvent,
    Function,
    FunctionVersion,
    Instance,
    Member,
    Source,
    Token,
)
from services.registry.paging import Pages
from services.registry.secrets import SecretBox
from services.registry.store import RegistryStore, now, on_rollback
from services.registry.validation import FilterChecker, SyntaxChecker

# What a version is counted for beyond its code and definitions (its row): tiny versions by the
# million would otherwise fit any quota of bytes.
VERSION_OVERHEAD = 1024
# Marks a transaction whose change was counted against its workspace's budget.
_COUNTED = "eventfn.change_counted"


@dataclass
class RegistryDeps:
    """The dependencies of the registry servicer, passed in by `main`."""

    store: RegistryStore
    authn: Authenticator
    secrets: SecretBox
    check_syntax: SyntaxChecker
    check_filter: FilterChecker
    pages: Pages
    idempotency: Idempotency
    changes: WorkspaceBudget
    code_bytes: int = 0  # of code the versions of a workspace's functions may hold; 0: any
    instances: int = 0  # a workspace may have; 0: any
    sources: int = 0  # a workspace may have; 0: any
    members: int = 0  # a workspace may have; 0: any
    tokens_per_member: int = 0  # live (neither revoked nor expired); 0: any
    deployed_code_bytes: int = 0  # of the versions a workspace's instances run; 0: any

    async def room_for_instance(self, session: AsyncSession, workspace_id: str) -> None:
        """Refuse an instance past the workspace's quota (see `_room`)."""
        await self._room(
            session,
            workspace_id,
            Instance,
            self.instances,
            "instances",
            "EVENTFN_REGISTRY_INSTANCES_PER_WORKSPACE: every router and executor holds each, "
            "and counts it in its metrics",
        )

    async def room_for_source(self, session: AsyncSession, workspace_id: str) -> None:
        """Refuse a source past the workspace's quota (see `_room`)."""
        await self._room(
            session,
            workspace_id,
            Source,
            self.sources,
            "sources",
            "EVENTFN_REGISTRY_SOURCES_PER_WORKSPACE: every router holds each, and counts it "
            "in its metrics",
        )

    async def room_for_member(self, session: AsyncSession, workspace_id: str) -> None:
        """Refuse a member past the workspace's quota (see `_room`)."""
        await self._room(
            session,
            workspace_id,
            Member,
            self.members,
            "members",
            "EVENTFN_REGISTRY_MEMBERS_PER_WORKSPACE: each is read at every call it makes",
        )

    async def room_for_token(self, session: AsyncSession, member_id: str) -> None:
        """Refuse a token past the member's quota of live ones (RESOURCE_EXHAUSTED: waiting
        changes nothing until one expires); the member's creations wait for each other."""
        if not self.tokens_per_member:
            return
        await session.exec(select(func.pg_advisory_xact_lock(func.hashtext(f"tokens:{member_id}"))))
        at = now()
        count = await session.scalar(
            select(func.count())
            .select_from(Token)
            .where(
                Token.member_id == member_id,
                col(Token.revoked_at).is_(None),
                or_(col(Token.expires_at).is_(None), col(Token.expires_at) > at),
            )
        )
        if int(count or 0) >= self.tokens_per_member:
            raise ResourceExhausted(
                f"member {member_id} holds {count} live tokens, the most it may "
                "(EVENTFN_REGISTRY_TOKENS_PER_MEMBER): revoke tokens no longer used",
                retry_after=None,
            )

    @staticmethod
    async def _room(
        session: AsyncSession,
        workspace_id: str,
        model: type[Instance] | type[Source] | type[Member],
        quota: int,
        noun: str,
        why: str,
    ) -> None:
        """Refuse one more row of `model` past the workspace's `quota` (RESOURCE_EXHAUSTED:
        waiting changes nothing; 0: no quota). The workspace's creations of the kind wait for
        each other here, to the end of their transactions: concurrent ones each passed a check
        of the same count."""
        if not quota:
            return
        await session.exec(
            select(func.pg_advisory_xact_lock(func.hashtext(f"{noun}:{workspace_id}")))
        )
        count = await session.scalar(
            select(func.count()).select_from(model).where(model.workspace_id == workspace_id)
        )
        if int(count or 0) >= quota:
            raise ResourceExhausted(
                f"workspace {workspace_id} has {count} {noun}, the most it may have ({why}): "
                f"delete {noun} no longer used, or ask the operator to raise it",
                retry_after=None,
            )

    async def room_for_code(
        self, session: AsyncSession, workspace_id: str, code: str, schema: list[Any]
    ) -> None:
        """Refuse a new version that would take what the workspace's versions store (code,
        settings definitions, and VERSION_OVERHEAD each) past its quota (RESOURCE_EXHAUSTED:
        waiting changes nothing). The workspace's saves wait for each other here, to the end
        of their transactions: concurrent ones each passed a check of the same total."""
        if not self.code_bytes:
            return
        await session.exec(
            select(func.pg_advisory_xact_lock(func.hashtext(f"code:{workspace_id}")))
        )
        stored = await session.scalar(
            select(
                func.sum(
                    func.octet_length(FunctionVersion.code)
                    + func.octet_length(cast(FunctionVersion.settings, Text))
                    + VERSION_OVERHEAD
                )
            )
            .join(Function, col(Function.id) == col(FunctionVersion.function_id))
            .where(Function.workspace_id == workspace_id)
        )
        stored = int(stored or 0)  # no version yet: none
        adding = len(code.encode()) + len(orjson.dumps(schema)) + VERSION_OVERHEAD
        if stored + adding > self.code_bytes:
            mib = 1024 * 1024
            raise ResourceExhausted(
                f"workspace {workspace_id}'s function versions take {stored / mib:.1f} "
                f"MiB (code and settings definitions); this one's {adding / mib:.1f} MiB would "
                f"take them past the {self.code_bytes / mib:.0f} MiB they may take "
                "(EVENTFN_REGISTRY_CODE_BYTES_PER_WORKSPACE): delete versions no instance runs "
                "(DeleteFunctionVersion) or functions no longer used",
                retry_after=None,
            )

    async def lock_deployments(self, session: AsyncSession, workspace_id: str) -> None:
        """Make the workspace's changes of what its instances run wait for each other, to
        the end of their transactions (see `room_to_run`). Taken first in the transaction,
        before any row lock: a Save & Deploy holding an instance and waiting here, and a
        deploy holding this and waiting for that instance, deadlocked."""
        if self.deployed_code_bytes:
            await session.exec(
                select(func.pg_advisory_xact_lock(func.hashtext(f"deployed:{workspace_id}")))
            )

    async def room_to_run(
        self,
        session: AsyncSession,
        workspace_id: str,
        version_id: str,
        moving: Collection[str] = (),
    ) -> None:
        """Refuse to run a version (on a new instance, or on the instances `moving` to it)
        when the code of the versions the workspace's instances would then run, each once,
        passes its quota and more than they run now (every router, executor and retrier holds
        that code; RESOURCE_EXHAUSTED: waiting changes nothing). A change that takes no more
        goes through: a hotfix in place of a version, a workspace past a lowered quota
        shrinking. Called under `lock_deployments`."""
        if not self.deployed_code_bytes:
            return
        running = select(Instance.version_id).where(Instance.workspace_id == workspace_id)
        if not moving and await session.scalar(
            select(running.where(Instance.version_id == version_id).exists())
        ):
            return  # a version the workspace runs already: the code it holds stays the same
        size = func.coalesce(func.sum(func.octet_length(FunctionVersion.code)), 0)
        staying = running.where(col(Instance.id).not_in(list(moving))) if moving else running
        now = await session.scalar(select(size).where(col(FunctionVersion.id).in_(running)))
        then = await session.scalar(
            select(size).where(
                col(FunctionVersion.id).in_(staying) | (col(FunctionVersion.id) == version_id)
            )
        )
        now, then = int(now or 0), int(then or 0)
        if then > self.deployed_code_bytes and then > now:
            mib = 1024 * 1024
            raise ResourceExhausted(
                f"the versions workspace {workspace_id}'s instances would run take "
                f"{then / mib:.1f} MiB of code together, past the "
                f"{self.deployed_code_bytes / mib:.1f} MiB they may take "
                "(EVENTFN_REGISTRY_DEPLOYED_CODE_BYTES_PER_WORKSPACE: every router, executor "
                "and retrier holds each once): move instances to versions others run, or "
                "delete instances no longer used",
                retry_after=None,
            )

    async def change_config(
        self, session: AsyncSession, caller: Caller, **touched: Iterable[str]
    ) -> None:
        """Count a data-plane change (see `count_change`), then advance the configuration
        revision naming what it `touched` (see `RegistryStore.bump_config`)."""
        self.count_change(session, caller)
        await self.store.bump_config(session, **touched)

    def count_change(self, session: AsyncSession, caller: Caller, *, own: bool = False) -> None:
        """Count a change against the caller's workspace budget, once a transaction; given
        back if the transaction fails.

        Every create, update and delete is counted: those of the data plane are applied by
        every router and executor, and each leaves rows (an audit entry at least; tokens and
        members created and deleted in a loop grew the database without any bound). Called
        once the change is authorized, checked and about to be written, in its transaction:
        a refused call (not allowed, invalid, over the budget) spends nothing and changes
        nothing. A change a member makes for itself (`own`: its tokens) is counted on a
        budget of its own: on the workspace's, a read-only member minting tokens in a loop
        held up every owner's change (a leaked write key's rotation).
        """
        if session.info.get(_COUNTED):
            return
        member_id = caller.member_id if own else ""
        self.changes.take(caller.workspace_id, member_id)
        session.info[_COUNTED] = True
        on_rollback(session, lambda: self.changes.give_back(caller.workspace_id, member_id))

    async def audit(
        self,
        session: AsyncSession,
        caller: Caller,
        action: str,
        resource_type: str,
        resource_id: str,
        details: dict[str, Any] | None = None,
        *,
        spend: bool = True,
    ) -> AuditEvent:
        """Count the caller's change (see `count_change`) and record it in the audit trail,
        in the session's transaction; return the entry.

        Without `spend`, the change is not counted: revoking a token and removing a member
        take access away, which a workspace must be able to do however much another of its
        members spent (each is made once; their creations were counted)."""
        if spend:
            self.count_change(session, caller)
        actor = await self.store.get(session, Member, caller.member_id, "member")
        return self.store.audit(
            session,
            workspace_id=caller.workspace_id,
            actor=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            details=details,
        )
