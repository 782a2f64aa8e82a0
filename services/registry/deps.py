"""What every RPC group of the registry is built from, and the audit step they all take."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.workspace_budget import WorkspaceBudget
from services.registry.access import Authenticator
from services.registry.auth import Caller
from services.registry.idempotency import Idempotency
from services.registry.models import AuditEvent, Member
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
