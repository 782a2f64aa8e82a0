"""Rows to protobuf messages. Encrypted setting values only ever leave as the mask."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.registry import models as m
from services.registry.etags import etag
from services.registry.secrets import MASK, is_sealed


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """Convert a datetime to a Timestamp (None stays unset)."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """Convert a JSON object to a Struct."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


def workspace(w: m.Workspace) -> res.Workspace:
    """Convert a workspace row."""
    return res.Workspace(
        id=w.id, name=w.name, create_time=ts(w.created_at), etag=etag("workspace", w.id, w.revision)
    )


def grant(g: dict[str, Any]) -> res.RoleGrant:
    """Convert a stored role grant."""
    return res.RoleGrant(
        role=g["role"], function_ids=g.get("function_ids", []), source_ids=g.get("source_ids", [])
    )


def member(x: m.Member) -> res.Member:
    """Convert a member row."""
    return res.Member(
        id=x.id,
        workspace_id=x.workspace_id,
        email=x.email,
        roles=[grant(g) for g in x.roles],
        create_time=ts(x.created_at),
        etag=etag("member", x.id, x.revision),
    )


def token(t: m.Token) -> res.Token:
    """Convert a token row (never the secret)."""
    return res.Token(
        id=t.id,
        member_id=t.member_id,
        name=t.name,
        prefix=t.prefix,
        create_time=ts(t.created_at),
        expire_time=ts(t.expires_at),
        revoke_time=ts(t.revoked_at),
    )


def source(s: m.Source) -> res.Source:
    """Convert a source row."""
    return res.Source(
        id=s.id,
        workspace_id=s.workspace_id,
        name=s.name,
        write_key=s.write_key,
        create_time=ts(s.created_at),
        etag=etag("source", s.id, s.revision),
    )


def function(f: m.Function) -> res.Function:
    """Convert a function row."""
    return res.Function(
        id=f.id,
        workspace_id=f.workspace_id,
        name=f.name,
        description=f.description,
        latest_version_id=f.latest_version_id,
        latest_version_number=f.latest_version_number,
        create_time=ts(f.created_at),
        update_time=ts(f.updated_at),
        etag=etag("function", f.id, f.revision),
    )


def setting_definitions(rows: list[dict[str, Any]]) -> list[types_pb2.SettingDefinition]:
    """Convert a stored settings schema."""
    return [types_pb2.SettingDefinition(**row) for row in rows]


def version(v: m.FunctionVersion, *, with_code: bool = True) -> res.FunctionVersion:
    """Convert a version row, with or without its code."""
    return res.FunctionVersion(
        id=v.id,
        function_id=v.function_id,
        number=v.number,
        code=v.code if with_code else "",
        settings=setting_definitions(v.settings),
        created_by=v.created_by,
        create_time=ts(v.created_at),
    )


def masked_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Return stored settings with every encrypted value replaced by the mask."""
    return {k: (MASK if is_sealed(v) else v) for k, v in stored.items()}


def instance(i: m.Instance) -> res.Instance:
    """Convert an instance row; encrypted settings are masked."""
    return res.Instance(
        id=i.id,
        workspace_id=i.workspace_id,
        function_id=i.function_id,
        source_id=i.source_id,
        version_id=i.version_id,
        name=i.name,
        settings=struct(masked_settings(i.settings)),
        enabled=i.enabled,
        batch_size=i.batch_size,
        batch_wait_ms=i.batch_wait_ms,
        timeout_ms=i.timeout_ms,
        retry_window_seconds=i.retry_window_seconds,
        retry_max_delay_seconds=i.retry_max_delay_seconds,
        filters=i.filters,
        etag=etag("instance", i.id, i.revision),
        create_time=ts(i.created_at),
        update_time=ts(i.updated_at),
    )


def audit_event(a: m.AuditEvent) -> res.AuditEvent:
    """Convert an audit row."""
    return res.AuditEvent(
        id=a.id or 0,
        workspace_id=a.workspace_id,
        actor_member_id=a.actor_member_id,
        actor_email=a.actor_email,
        action=a.action,
        resource_type=a.resource_type,
        resource_id=a.resource_id,
        details=struct(a.details),
        create_time=ts(a.created_at),
    )
