"""Tables of the registry (SQLModel). The schema is created by Alembic migrations, not here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def _ts(**kw: Any) -> Any:
    return Field(sa_column=Column(DateTime(timezone=True), **kw))


class Workspace(SQLModel, table=True):
    """A workspace; every other row belongs to one."""

    id: str = Field(primary_key=True, sa_type=Text)
    name: str = Field(sa_column=Column(Text, unique=True, nullable=False))
    revision: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _ts(nullable=False)


class Member(SQLModel, table=True):
    """A person or service account of a workspace, with role grants as JSON."""

    __table_args__ = (UniqueConstraint("workspace_id", "email"),)
    id: str = Field(primary_key=True, sa_type=Text)
    workspace_id: str = Field(
        sa_column=Column(Text, ForeignKey("workspace.id", ondelete="CASCADE"), nullable=False)
    )
    email: str = Field(sa_type=Text)
    roles: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    bootstrap: bool = False
    revision: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _ts(nullable=False)


class Token(SQLModel, table=True):
    """An API token; only the SHA-256 of the secret is stored."""

    id: str = Field(primary_key=True, sa_type=Text)
    member_id: str = Field(
        sa_column=Column(Text, ForeignKey("member.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(sa_type=Text)
    prefix: str = Field(sa_type=Text)
    secret_hash: str = Field(sa_column=Column(Text, unique=True, nullable=False))
    created_at: datetime = _ts(nullable=False)
    expires_at: datetime | None = _ts(nullable=True)
    revoked_at: datetime | None = _ts(nullable=True)


class Source(SQLModel, table=True):
    """A source of events and its current write key."""

    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: str = Field(primary_key=True, sa_type=Text)
    workspace_id: str = Field(
        sa_column=Column(Text, ForeignKey("workspace.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(sa_type=Text)
    write_key: str = Field(sa_column=Column(Text, unique=True, nullable=False))
    revision: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _ts(nullable=False)


class Function(SQLModel, table=True):
    """A destination function; its code lives in its versions."""

    __table_args__ = (UniqueConstraint("workspace_id", "name"),)
    id: str = Field(primary_key=True, sa_type=Text)
    workspace_id: str = Field(
        sa_column=Column(Text, ForeignKey("workspace.id", ondelete="CASCADE"), nullable=False)
    )
    name: str = Field(sa_type=Text)
    description: str = Field(default="", sa_type=Text)
    latest_version_id: str = Field(default="", sa_type=Text)
    latest_version_number: int = 0
    revision: int = Field(default=1, sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class FunctionVersion(SQLModel, table=True):
    """An immutable snapshot of code and settings schema."""

    __tablename__ = "function_version"  # type: ignore[assignment]
    __table_args__ = (UniqueConstraint("function_id", "number"),)
    id: str = Field(primary_key=True, sa_type=Text)
    function_id: str = Field(
        sa_column=Column(Text, ForeignKey("function.id", ondelete="CASCADE"), nullable=False)
    )
    number: int
    code: str = Field(sa_column=Column(Text, nullable=False))
    settings: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    created_by: str = Field(sa_type=Text)
    created_at: datetime = _ts(nullable=False)


class Instance(SQLModel, table=True):
    """A function connected to a source; encrypted setting values are stored sealed."""

    __table_args__ = (
        UniqueConstraint("workspace_id", "name"),
        # Whether a workspace's instances run a version, without reading them all (a
        # CreateInstance's quota check read 10,000 twice: 17 ms of its 37).
        Index("ix_instance_workspace_version", "workspace_id", "version_id"),
    )
    id: str = Field(primary_key=True, sa_type=Text)
    workspace_id: str = Field(
        sa_column=Column(Text, ForeignKey("workspace.id", ondelete="CASCADE"), nullable=False)
    )
    function_id: str = Field(sa_column=Column(Text, ForeignKey("function.id"), nullable=False))
    source_id: str = Field(sa_column=Column(Text, ForeignKey("source.id"), nullable=False))
    version_id: str = Field(
        sa_column=Column(Text, ForeignKey("function_version.id"), nullable=False)
    )
    name: str = Field(sa_type=Text)
    settings: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    enabled: bool = True
    batch_size: int = 20
    batch_wait_ms: int = 10_000
    timeout_ms: int = 5_000
    retry_window_seconds: int = 0
    retry_max_delay_seconds: int = 0
    # Requests of the function carry the event's W3C trace context (off by default).
    propagate_trace: bool = False
    filters: list[str] = Field(sa_column=Column(JSONB, nullable=False))
    revision: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = _ts(nullable=False)
    updated_at: datetime = _ts(nullable=False)


class AuditEvent(SQLModel, table=True):
    """One change someone made; never holds secret values."""

    __tablename__ = "audit_event"  # type: ignore[assignment]
    # The order of entries, numbered across every workspace: never shown (its steps would
    # count the other tenants' changes).
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True))
    # The id in the entry's name: its time and random bits (`audit_id`; the column's default,
    # of the same form (migration 0010), names what an older registry writes in an upgrade).
    public_id: str = Field(sa_column=Column(Text, unique=True, nullable=False))
    workspace_id: str = Field(index=True, sa_type=Text)
    actor_member_id: str = Field(sa_type=Text)
    actor_email: str = Field(sa_type=Text)
    action: str = Field(sa_type=Text)
    resource_type: str = Field(sa_type=Text)
    resource_id: str = Field(index=True, sa_type=Text)
    details: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    created_at: datetime = _ts(nullable=False)


class RequestRecord(SQLModel, table=True):
    """A create/save call made with a request_id, and its response, for 24 hours (AIP-155).

    The response is kept sealed (it may hold a token's secret); `digest` is the SHA-256 of the
    request without its request_id, so a reused id with another request is refused.
    """

    __tablename__ = "request_record"  # type: ignore[assignment]
    workspace_id: str = Field(primary_key=True, sa_type=Text)
    method: str = Field(primary_key=True, sa_type=Text)
    request_id: str = Field(primary_key=True, sa_type=Text)
    digest: str = Field(sa_type=Text)
    response: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, index=True)
    )


class SecretKey(SQLModel, table=True):
    """A data key sealing encrypted values, stored wrapped (AES-256-GCM) by a master key.

    `state` is "current" (new values are sealed under it; at most one) or "retiring" (still
    read, being replaced by a rotation, then deleted); `master_key_id` names the master key
    that wrapped it, so a master key change can be detected and re-wrapped.
    """

    __tablename__ = "secret_key"  # type: ignore[assignment]
    __table_args__ = (
        Index(
            "ix_secret_key_one_current",
            "state",
            unique=True,
            postgresql_where=text("state = 'current'"),
        ),
    )
    id: str = Field(primary_key=True, sa_type=Text)
    master_key_id: str = Field(sa_type=Text)
    wrapped: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: str = Field(sa_type=Text)
    created_at: datetime = _ts(nullable=False)


class ConfigState(SQLModel, table=True):
    """The single row holding the data-plane configuration revision."""

    __tablename__ = "config_state"  # type: ignore[assignment]
    id: int = Field(default=1, primary_key=True)
    revision: int = Field(sa_column=Column(BigInteger, nullable=False))


class ConfigChange(SQLModel, table=True):
    """One object a config revision changed, written in the change's own transaction.

    `kind` is "source", "instance", "function" or "workspace" (the last two stand for every
    source and instance they hold), or "none" for a revision that changed nothing the data
    plane holds; every revision has at least one row, so a gap in the log is detectable.
    """

    __tablename__ = "config_change"  # type: ignore[assignment]
    revision: int = Field(sa_column=Column(BigInteger, primary_key=True))
    kind: str = Field(primary_key=True, sa_type=Text)
    object_id: str = Field(primary_key=True, sa_type=Text)
    created_at: datetime = _ts(nullable=False)


# The delivery-record tables belong to services/common/deliveries (the data plane writes and
# reads them); importing them puts them in this metadata, which the migrations are checked
# against.
from services.common.deliveries import tables as _delivery_tables  # noqa: E402, F401
