"""The delivery-record tables (PostgreSQL). The registry's migration 0002_deliveries creates
them; the registry's models import this module so its migrations see them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Float, Identity, Index, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


class DeliveryMinute(SQLModel, table=True):
    """Per-instance, per-minute delivery counts (written by the executor pool in batches)."""

    __tablename__ = "delivery_minute"  # type: ignore[assignment]
    instance_id: str = Field(sa_column=Column(Text, primary_key=True))
    minute: datetime = Field(sa_column=Column(DateTime(timezone=True), primary_key=True))
    workspace_id: str = Field(sa_column=Column(Text, nullable=False))
    function_id: str = Field(sa_column=Column(Text, nullable=False))
    delivered: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    retried: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    discarded: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    failed: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    filtered: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    invocations: int = Field(sa_column=Column(BigInteger, nullable=False, server_default="0"))
    execution_ms: float = Field(sa_column=Column(Float, nullable=False, server_default="0"))


class DeliveryFailure(SQLModel, table=True):
    """A sampled failed, discarded or retried event with what is needed to debug it."""

    __tablename__ = "delivery_failure"  # type: ignore[assignment]
    __table_args__ = (Index("ix_delivery_failure_instance_time", "instance_id", "time"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, Identity(), primary_key=True))
    instance_id: str = Field(sa_column=Column(Text, nullable=False))
    time: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    message_id: str = Field(sa_column=Column(Text, nullable=False))
    version_id: str = Field(sa_column=Column(Text, nullable=False))
    outcome: str = Field(sa_column=Column(Text, nullable=False))
    error_type: str = Field(sa_column=Column(Text, nullable=False))
    error_message: str = Field(sa_column=Column(Text, nullable=False))
    error_stack: str = Field(sa_column=Column(Text, nullable=False))
    event: str = Field(sa_column=Column(Text, nullable=False))
    logs: str = Field(sa_column=Column(Text, nullable=False))
    requests: list[dict[str, Any]] = Field(sa_column=Column(JSONB, nullable=False))
    # The W3C trace id of the event's journey (32 hex digits), "" when unknown.
    trace_id: str = Field(sa_column=Column(Text, nullable=False, server_default=""))
    # How many events the invocation held: `logs` and `requests` are theirs together.
    invocation_events: int = Field(sa_column=Column(Integer, nullable=False, server_default="1"))
