"""Rows to protobuf messages (resource names, durations, enums). Encrypted setting values only
ever leave as the mask."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from eventfn_api.registry.v1 import resources_pb2 as res
from eventfn_api.type.v1 import types_pb2
from services.common import names
from services.registry import models as m
from services.registry.etags import etag
from services.registry.secrets import MASK, is_sealed

# What the audit trail stores (strings, as written since the first release) and its enums.
RESOURCE_TYPES = {
    "workspace": res.RESOURCE_TYPE_WORKSPACE,
    "member": res.RESOURCE_TYPE_MEMBER,
    "token": res.RESOURCE_TYPE_TOKEN,
    "source": res.RESOURCE_TYPE_SOURCE,
    "function": res.RESOURCE_TYPE_FUNCTION,
    "instance": res.RESOURCE_TYPE_INSTANCE,
    "secret_key": res.RESOURCE_TYPE_SECRET_KEY,
}
STORED_ACTIONS = {"member.update_roles": "member.update", "dead.replay": "dead_letters.replay"}
STORED_ACTIONS["dead.purge"] = "dead_letters.purge"
KINDS = {
    "member": names.MEMBER,
    "token": names.TOKEN,
    "source": names.SOURCE,
    "function": names.FUNCTION,
    "instance": names.INSTANCE,
}


def audit_action(stored: str) -> int:
    """Return the AuditAction of a stored action string, e.g. "function.save"."""
    action = STORED_ACTIONS.get(stored, stored)
    name = "AUDIT_ACTION_" + action.upper().replace(".", "_")
    return res.AuditAction.Value(name) if name in res.AuditAction.keys() else 0


def stored_action(action: int) -> str:
    """Return the string the audit trail stores for an AuditAction."""
    text = res.AuditAction.Name(action).removeprefix("AUDIT_ACTION_").lower()  # type: ignore[arg-type]
    area, _, verb = text.partition("_")
    if area == "dead":  # DEAD_LETTERS_REPLAY -> dead.replay, as stored since the start
        return "dead." + verb.removeprefix("letters_")
    return f"{area}.{verb}"


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """Convert a datetime to a Timestamp (None stays unset)."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def duration_ms(milliseconds: int) -> duration_pb2.Duration:
    """Convert milliseconds to a Duration."""
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(milliseconds=milliseconds))
    return out


def duration_s(seconds: int) -> duration_pb2.Duration | None:
    """Convert seconds to a Duration; 0 (the deployment's default) stays unset."""
    if not seconds:
        return None
    out = duration_pb2.Duration()
    out.FromSeconds(seconds)
    return out


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """Convert a JSON object to a Struct."""
    out = struct_pb2.Struct()
    out.update(value)
    return out


def workspace(w: m.Workspace) -> res.Workspace:
    """Convert a workspace row."""
    return res.Workspace(
        name=names.workspace(w.id),
        display_name=w.name,
        create_time=ts(w.created_at),
        etag=etag("workspace", w.id, w.revision),
    )


def grant(workspace_id: str, g: dict[str, Any]) -> res.RoleGrant:
    """Convert a stored role grant (ids) to names."""
    return res.RoleGrant(
        role=g["role"],
        functions=[names.FUNCTION.name(workspace_id, f) for f in g.get("function_ids", [])],
        sources=[names.SOURCE.name(workspace_id, s) for s in g.get("source_ids", [])],
    )


def member(x: m.Member) -> res.Member:
    """Convert a member row."""
    return res.Member(
        name=names.MEMBER.name(x.workspace_id, x.id),
        email=x.email,
        roles=[grant(x.workspace_id, g) for g in x.roles],
        create_time=ts(x.created_at),
        etag=etag("member", x.id, x.revision),
    )


def token(t: m.Token, workspace_id: str) -> res.Token:
    """Convert a token row (never the secret)."""
    return res.Token(
        name=names.TOKEN.name(workspace_id, t.id),
        member=names.MEMBER.name(workspace_id, t.member_id),
        display_name=t.name,
        prefix=t.prefix,
        create_time=ts(t.created_at),
        expire_time=ts(t.expires_at),
        revoke_time=ts(t.revoked_at),
    )


def source(s: m.Source, *, with_write_key: bool) -> res.Source:
    """Convert a source row; its write key only `with_write_key` (for a caller who may
    administer the source: the key sends events to every instance on it)."""
    return res.Source(
        name=names.SOURCE.name(s.workspace_id, s.id),
        display_name=s.name,
        write_key=s.write_key if with_write_key else "",
        create_time=ts(s.created_at),
        etag=etag("source", s.id, s.revision),
    )


def function(f: m.Function) -> res.DestinationFunction:
    """Convert a function row."""
    return res.DestinationFunction(
        name=names.FUNCTION.name(f.workspace_id, f.id),
        display_name=f.name,
        description=f.description,
        latest_version=names.version(f.workspace_id, f.id, f.latest_version_id)
        if f.latest_version_id
        else "",
        latest_version_number=f.latest_version_number,
        create_time=ts(f.created_at),
        update_time=ts(f.updated_at),
        etag=etag("function", f.id, f.revision),
    )


def setting_definitions(rows: list[dict[str, Any]]) -> list[types_pb2.SettingDefinition]:
    """Convert a stored settings schema."""
    return [types_pb2.SettingDefinition(**row) for row in rows]


def version(
    v: m.FunctionVersion, workspace_id: str, *, with_code: bool = True
) -> res.FunctionVersion:
    """Convert a version row, with or without its code."""
    return res.FunctionVersion(
        name=names.version(workspace_id, v.function_id, v.id),
        number=v.number,
        code=v.code if with_code else "",
        settings=setting_definitions(v.settings),
        creator=v.created_by,
        create_time=ts(v.created_at),
    )


def masked_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Return stored settings with every encrypted value replaced by the mask."""
    return {k: (MASK if is_sealed(v) else v) for k, v in stored.items()}


def instance(i: m.Instance) -> res.Instance:
    """Convert an instance row; encrypted settings are masked."""
    return res.Instance(
        name=names.INSTANCE.name(i.workspace_id, i.id),
        function=names.FUNCTION.name(i.workspace_id, i.function_id),
        source=names.SOURCE.name(i.workspace_id, i.source_id),
        version=names.version(i.workspace_id, i.function_id, i.version_id),
        display_name=i.name,
        settings=struct(masked_settings(i.settings)),
        state=res.Instance.STATE_ENABLED if i.enabled else res.Instance.STATE_DISABLED,
        batch_size=i.batch_size,
        batch_wait=duration_ms(i.batch_wait_ms),
        timeout=duration_ms(i.timeout_ms),
        retry_window=duration_s(i.retry_window_seconds),
        retry_max_delay=duration_s(i.retry_max_delay_seconds),
        filters=i.filters,
        propagate_trace=i.propagate_trace,
        etag=etag("instance", i.id, i.revision),
        create_time=ts(i.created_at),
        update_time=ts(i.updated_at),
    )


def resource_name(workspace_id: str, resource_type: str, resource_id: str) -> str:
    """Return the name of the resource an audit entry is about."""
    if resource_type == "workspace":
        return names.workspace(resource_id)
    if resource_type == "secret_key":  # deployment-wide, of no workspace
        return f"secretKeys/{resource_id}"
    kind = KINDS.get(resource_type)
    return kind.name(workspace_id, resource_id) if kind else resource_id


def audit_event(a: m.AuditEvent) -> res.AuditEvent:
    """Convert an audit row."""
    actor = (
        names.MEMBER.name(a.workspace_id, a.actor_member_id)
        if a.actor_member_id != "system"
        else "system"
    )
    return res.AuditEvent(
        name=names.AUDIT_EVENT.name(a.workspace_id, a.public_id),
        actor=actor,
        actor_email=a.actor_email,
        action=audit_action(a.action),  # type: ignore[arg-type]
        resource_type=RESOURCE_TYPES.get(a.resource_type, res.RESOURCE_TYPE_UNSPECIFIED),
        resource=resource_name(a.workspace_id, a.resource_type, a.resource_id),
        details=struct(a.details),
        create_time=ts(a.created_at),
    )
