"""What every RPC group of the registry is built from, and the audit step they all take."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import ResourceExhausted
from services.common.workspace_budget import WorkspaceBudget
from services.registry.access import Authenticator
from services.registry.auth import Caller
from services.registry.idempotency import Idempotency
from services.registry.models import AuditEvent, Function, FunctionVersion, Member
from services.registry.paging import Pages
from services.registry.secrets import SecretBox
from services.registry.store import RegistryStore
from services.registry.validation import FilterChecker, SyntaxChecker


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

    async def room_for_code(self, session: AsyncSession, workspace_id: str, code: str) -> None:
        """Refuse a new version whose code would take the code the workspace stores past its
        quota (RESOURCE_EXHAUSTED: waiting changes nothing)."""
        if not self.code_bytes:
            return
        stored = await session.scalar(
            select(func.coalesce(func.sum(func.octet_length(FunctionVersion.code)), 0))
            .join(Function, col(Function.id) == col(FunctionVersion.function_id))
            .where(Function.workspace_id == workspace_id)
        )
        adding = len(code.encode())
        if (stored or 0) + adding > self.code_bytes:
            mib = 1024 * 1024
            raise ResourceExhausted(
                f"workspace {workspace_id} stores {(stored or 0) / mib:.1f} MiB of function code "
                f"in its versions; this version's {adding / mib:.1f} MiB would take it past the "
                f"{self.code_bytes / mib:.0f} MiB it may store "
                "(EVENTFN_REGISTRY_CODE_BYTES_PER_WORKSPACE): delete functions no longer used",
                retry_after=None,
            )

    async def change_config(
        self, session: AsyncSession, caller: Caller, **touched: Iterable[str]
    ) -> None:
        """Count a data-plane change against the caller's workspace budget, then advance the
        configuration revision naming what it `touched` (see `RegistryStore.bump_config`).

        Called once the change is authorized, checked and about to be written, in its
        transaction: a refused call (not allowed, invalid, over the budget) spends nothing
        and changes nothing.
        """
        self.changes.take(caller.workspace_id)
        await self.store.bump_config(session, **touched)


async def audit(
    store: RegistryStore,
    session: AsyncSession,
    caller: Caller,
    action: str,
    resource_type: str,
    resource_id: str,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Record the caller's change in the audit trail, in the session's transaction; return
    the entry."""
    actor = await store.get(session, Member, caller.member_id, "member")
    return store.audit(
        session,
        workspace_id=caller.workspace_id,
        actor=actor,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        details=details,
    )
