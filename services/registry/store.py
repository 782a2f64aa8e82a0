"""PostgreSQL access of the registry: one short transaction per operation, audit included.

Every change that the data plane sees also bumps the single config revision and notifies
`WatchConfig` listeners, inside the same transaction, so a watcher never sees torn state.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Container, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import defer
from sqlmodel import SQLModel, col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from services.common.errors import NotFound
from services.registry.models import (
    AuditEvent,
    ConfigChange,
    ConfigState,
    Function,
    FunctionVersion,
    Instance,
    Member,
    Source,
    Token,
    Workspace,
)

CONFIG_CHANNEL = "eventfn_config"
T = TypeVar("T", bound=SQLModel)
InstanceRow = tuple[Instance, FunctionVersion, Function, Workspace]


@dataclass(frozen=True)
class ConfigDelta:
    """The data-plane configuration at `revision`, for the sources and instances named.

    An id in `source_ids`/`instance_ids` without a row in `sources`/`instances` was removed.
    """

    revision: int
    source_ids: set[str] = field(default_factory=set)
    instance_ids: set[str] = field(default_factory=set)
    sources: list[tuple[Source, Workspace]] = field(default_factory=list)
    # Their versions come without their code (read once a version, into `code`).
    instances: list[InstanceRow] = field(default_factory=list)
    # By version id, of the versions `instances` run, but those the reader said it knows
    # (a version's code never changes).
    code: dict[str, str] = field(default_factory=dict)


ON_ROLLBACK = "eventfn.on_rollback"


def on_rollback(session: AsyncSession, undo: Callable[[], None]) -> None:
    """Have `undo` run if the session's transaction (of `RegistryStore.transaction`) fails:
    what was counted in memory for a change that was not made."""
    session.info.setdefault(ON_ROLLBACK, []).append(undo)


def now() -> datetime:
    """Return the current UTC time."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Make a new object id with a type prefix, e.g. "fn_3f2a..."."""
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def audit_id(created_at: datetime) -> str:
    """Make the id of an audit entry: its millisecond, then 64 random bits (ids sort in time
    order, and say nothing of other workspaces' entries)."""
    return f"aud_{int(created_at.timestamp() * 1000):012x}{secrets.randbits(64):016x}"


def unique_violation(error: IntegrityError) -> bool:
    """Tell whether an IntegrityError is a unique-constraint violation."""
    return getattr(error.orig, "sqlstate", None) == "23505" or "unique" in str(error).lower()


class RegistryStore:
    """Transactions over the registry tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """Open a session inside one transaction, committed on success; on failure, run what
        the session's `on_rollback` list holds (see `on_rollback`)."""
        async with self._sessions() as session:
            done = False
            try:
                async with session.begin():
                    yield session
                    done = True  # from here, the commit: it may have happened, whatever comes
            except BaseException:
                if not done:
                    for undo in session.info.pop(ON_ROLLBACK, ()):
                        undo()
                raise

    async def get(self, session: AsyncSession, model: type[T], object_id: str, kind: str) -> T:
        """Load a row by id or raise NotFound."""
        row = await session.get(model, object_id)
        if row is None:
            raise NotFound(kind, object_id)
        return row

    async def version_to_run(
        self, session: AsyncSession, version_id: str
    ) -> FunctionVersion | None:
        """Load a version an instance is about to run, locked against its deletion
        (DeleteFunctionVersion) until the transaction ends; None when there is none."""
        return await session.get(FunctionVersion, version_id, with_for_update={"key_share": True})

    async def get_in_workspace(
        self,
        session: AsyncSession,
        model: type[T],
        object_id: str,
        workspace_id: str,
        kind: str,
        *,
        lock: bool = False,
        name: str | None = None,
    ) -> T:
        """Load a row of the workspace (locked for update with `lock`); one of another
        workspace is NotFound too, named as the caller named it (`name`)."""
        row = await session.get(model, object_id, with_for_update=lock)
        if row is None or getattr(row, "workspace_id", None) != workspace_id:
            raise NotFound(kind, name or object_id)
        return row

    async def bump_config(
        self,
        session: AsyncSession,
        *,
        sources: Iterable[str] = (),
        instances: Iterable[str] = (),
        functions: Iterable[str] = (),
        workspaces: Iterable[str] = (),
    ) -> int:
        """Advance the data-plane config revision, log what it changed, notify at commit.

        Name every source and instance the change touched (a function or workspace stands for
        all of its instances, and the workspace for its sources too); WatchConfig sends those
        alone. The revision row's lock orders the changes: revisions commit in order.
        """
        conn = await session.connection()
        result = await conn.execute(
            text("UPDATE config_state SET revision = revision + 1 WHERE id = 1 RETURNING revision")
        )
        revision = int(result.scalar_one())
        touched = {
            (kind, object_id)
            for kind, ids in (
                ("source", sources),
                ("instance", instances),
                ("function", functions),
                ("workspace", workspaces),
            )
            for object_id in ids
        } or {("none", "")}
        at = now()
        await conn.execute(
            insert(ConfigChange),
            [
                {"revision": revision, "kind": kind, "object_id": object_id, "created_at": at}
                for kind, object_id in sorted(touched)
            ],
        )
        await conn.execute(text(f"NOTIFY {CONFIG_CHANNEL}, '{revision}'"))
        return revision

    async def config_revision(self, session: AsyncSession) -> int:
        """Read the current config revision."""
        state = await session.get(ConfigState, 1)
        return state.revision if state else 0

    def audit(
        self,
        session: AsyncSession,
        *,
        workspace_id: str,
        actor: Member | None,
        action: str,
        resource_type: str,
        resource_id: str,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Record a change in the audit trail, in the caller's transaction; return the entry."""
        created_at = now()
        entry = AuditEvent(
            public_id=audit_id(created_at),
            workspace_id=workspace_id,
            actor_member_id=actor.id if actor else "system",
            actor_email=actor.email if actor else "system",
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            details=details or {},
            created_at=created_at,
        )
        session.add(entry)
        return entry

    async def member_by_token_hash(self, secret_hash: str) -> tuple[Member, Token] | None:
        """Find the active token with this hash and its member."""
        async with self._sessions() as session:
            row = (
                await session.exec(
                    select(Token, Member)
                    .join(Member, col(Member.id) == col(Token.member_id))
                    .where(Token.secret_hash == secret_hash)
                )
            ).first()
            return (row[1], row[0]) if row else None

    async def count(self, session: AsyncSession, query: Any) -> int:
        """Count the rows a select would return."""
        return int((await session.exec(select(func.count()).select_from(query.subquery()))).one())

    async def versions_of(
        self, session: AsyncSession, version_ids: Sequence[str]
    ) -> dict[str, FunctionVersion]:
        """Load versions by id."""
        if not version_ids:
            return {}
        rows = await session.exec(
            select(FunctionVersion).where(col(FunctionVersion.id).in_(list(version_ids)))
        )
        return {v.id: v for v in rows.all()}

    async def snapshot(self) -> ConfigDelta:
        """Read the whole data-plane configuration consistently (repeatable read)."""
        async with self._sessions() as session:
            # One read-only REPEATABLE READ transaction: revision and rows are one state.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            revision = await self.config_revision(session)
            sources = await self._sources(session)
            instances = await self._instances(session)
            code = await self._code(session, instances, known=())
        return ConfigDelta(
            revision,
            source_ids={s.id for s, _ in sources},
            instance_ids={i.id for i, *_ in instances},
            sources=sources,
            instances=instances,
            code=code,
        )

    async def changes_since(self, since: int, known: Container[str]) -> ConfigDelta | None:
        """Read what changed after revision `since`, consistently (repeatable read), the code
        of versions but those `known`.

        None when the log cannot tell (it was pruned, or `since` predates it): read a snapshot.
        """
        async with self._sessions() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            revision = await self.config_revision(session)
            if revision <= since:
                return ConfigDelta(revision)
            changes = (
                await session.exec(
                    select(ConfigChange.revision, ConfigChange.kind, ConfigChange.object_id).where(
                        ConfigChange.revision > since
                    )
                )
            ).all()
            if len({r for r, _, _ in changes}) != revision - since:
                return None
            ids: dict[str, set[str]] = {}
            for _, kind, object_id in changes:
                ids.setdefault(kind, set()).add(object_id)
            source_ids = ids.get("source", set())
            instance_ids = ids.get("instance", set())
            if ids.get("function") or ids.get("workspace"):
                owned = await session.exec(
                    select(Instance.id).where(
                        col(Instance.function_id).in_(sorted(ids.get("function", ())))
                        | col(Instance.workspace_id).in_(sorted(ids.get("workspace", ())))
                    )
                )
                instance_ids |= set(owned.all())
            if ids.get("workspace"):
                owned = await session.exec(
                    select(Source.id).where(col(Source.workspace_id).in_(sorted(ids["workspace"])))
                )
                source_ids |= set(owned.all())
            instances = await self._instances(session, instance_ids)
            return ConfigDelta(
                revision,
                source_ids=source_ids,
                instance_ids=instance_ids,
                sources=await self._sources(session, source_ids),
                instances=instances,
                code=await self._code(session, instances, known),
            )

    async def prune_config_changes(self, older_than: timedelta) -> int:
        """Delete change-log rows older than `older_than`; return how many went."""
        async with self.transaction() as session:
            conn = await session.connection()
            result = await conn.execute(
                delete(ConfigChange).where(col(ConfigChange.created_at) < now() - older_than)
            )
        return int(result.rowcount or 0)

    @staticmethod
    async def _sources(
        session: AsyncSession, ids: set[str] | None = None
    ) -> list[tuple[Source, Workspace]]:
        """Read sources with their workspace: those of `ids`, or all."""
        query = select(Source, Workspace).join(
            Workspace, col(Workspace.id) == col(Source.workspace_id)
        )
        if ids is not None:
            if not ids:
                return []
            query = query.where(col(Source.id).in_(sorted(ids)))
        return [(s, w) for s, w in (await session.exec(query)).all()]

    @staticmethod
    async def _instances(session: AsyncSession, ids: set[str] | None = None) -> list[InstanceRow]:
        """Read instances with their version (but its code: see `_code`), function and
        workspace: those of `ids`, or all."""
        query = (
            select(Instance, FunctionVersion, Function, Workspace)
            .join(FunctionVersion, col(FunctionVersion.id) == col(Instance.version_id))
            .join(Function, col(Function.id) == col(Instance.function_id))
            .join(Workspace, col(Workspace.id) == col(Instance.workspace_id))
            # A version's code came in every row of its instances: a change to a function of
            # 1,000 instances of a 5 MB version read 5 GB.
            .options(defer(FunctionVersion.code, raiseload=True))  # type: ignore[arg-type]
        )
        if ids is not None:
            if not ids:
                return []
            query = query.where(col(Instance.id).in_(sorted(ids)))
        return [(i, v, f, w) for i, v, f, w in (await session.exec(query)).all()]

    @staticmethod
    async def _code(
        session: AsyncSession, instances: list[InstanceRow], known: Container[str]
    ) -> dict[str, str]:
        """Read the code of the versions these instances run, once each, but those known."""
        wanted = sorted({v.id for _, v, _, _ in instances if v.id not in known})
        if not wanted:
            return {}
        rows = await session.exec(
            select(FunctionVersion.id, FunctionVersion.code).where(
                col(FunctionVersion.id).in_(wanted)
            )
        )
        return dict(rows.all())


__all__ = [
    "CONFIG_CHANNEL",
    "AuditEvent",
    "Function",
    "FunctionVersion",
    "Instance",
    "Member",
    "RegistryStore",
    "Source",
    "Token",
    "Workspace",
]
