"""What the registry deletes once nobody needs it: request records past their day, audit
entries past their retention, tokens revoked or expired a month ago (but the bootstrap
administrator's, whose revoked row keeps a leaked EVENTFN_BOOTSTRAP_TOKEN from coming back).

Each grew for as long as the registry ran: request records were dropped only at start, and
audit entries and dead tokens never (a workspace may write 20 audited changes a second).
Every registry replica sweeps as it starts (in the background) and then every
`SWEEP_SECONDS`; audit entries and tokens go in batches of short transactions, and a sweep
running twice deletes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, delete, literal_column, or_, select
from sqlmodel import col

from services.registry.idempotency import purge_expired
from services.registry.models import AuditEvent, Member, Token
from services.registry.store import RegistryStore, audit_id, now

log = logging.getLogger(__name__)

SWEEP_SECONDS = 3600.0
# How long a revoked or expired token is still listed (with its revoke or expiry time).
DEAD_TOKEN_KEPT = timedelta(days=30)
# Rows deleted a transaction.
BATCH = 5000

_ROW = literal_column("ctid")  # PostgreSQL's row address: batches of any table's rows


@dataclass
class Housekeeping:
    """Delete what is past its time; `audit_retention` None keeps audit entries for ever."""

    store: RegistryStore
    audit_retention: timedelta | None

    async def sweep(self, at: datetime | None = None) -> dict[str, int]:
        """Delete everything past its time at `at` (now); return how many of each went."""
        at = at or now()
        gone = {
            "request records": await purge_expired(self.store),
            "dead tokens": await self._delete(
                Token,
                and_(
                    or_(
                        col(Token.revoked_at) < at - DEAD_TOKEN_KEPT,
                        col(Token.expires_at) < at - DEAD_TOKEN_KEPT,
                    ),
                    # The bootstrap administrator's stay: its token is registered from
                    # EVENTFN_BOOTSTRAP_TOKEN at every start unless its revoked row is there.
                    col(Token.member_id).not_in(
                        select(col(Member.id)).where(col(Member.bootstrap))
                    ),
                ),
            ),
        }
        if self.audit_retention is not None:
            # Entry ids begin with their millisecond (`audit_id`): the unique index on them
            # finds the old ones, with no index of the time column.
            oldest_kept = audit_id(at - self.audit_retention)[: len("aud_") + 12]
            gone["audit entries"] = await self._delete(
                AuditEvent, col(AuditEvent.public_id) < oldest_kept
            )
        if any(gone.values()):
            log.info(
                "housekeeping deleted %s",
                ", ".join(f"{count} {what}" for what, count in gone.items() if count),
            )
        return gone

    async def _delete(self, model: type[Token] | type[AuditEvent], old: ColumnElement[bool]) -> int:
        table = model.__table__  # type: ignore[attr-defined]
        deleted = 0
        while True:
            batch = select(_ROW).select_from(table).where(old).limit(BATCH)
            async with self.store.transaction() as s:
                result = await s.exec(delete(table).where(_ROW.in_(batch)))  # type: ignore[call-overload]
            count = result.rowcount or 0  # type: ignore[attr-defined]
            deleted += count
            if count < BATCH:
                return deleted

    async def run(self, every: float) -> None:
        """Sweep now, then every `every` seconds; a failed sweep is logged and tried again at
        the next. In the background: a first sweep after an upgrade may delete years of audit
        entries, which must not hold up the start."""
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("housekeeping failed; trying again in %.0f s", every)
            await asyncio.sleep(every)
