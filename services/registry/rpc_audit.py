"""Registry RPCs of the audit trail: reading it, and recording data-plane actions."""

from __future__ import annotations

from datetime import UTC

import grpc
from google.protobuf import json_format
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from services.common.errors import InvalidArgument, PermissionDenied
from services.registry import convert
from services.registry.auth import require
from services.registry.deps import RegistryDeps
from services.registry.models import AuditEvent, Instance, Member
from services.registry.validation import check_page_size, required

Ctx = grpc.aio.ServicerContext
# Actions data-plane services perform for a member and record with the service token.
DATA_PLANE_ACTIONS = frozenset({"dead.replay", "dead.purge"})


class AuditRpcs:
    """The audit trail."""

    def __init__(self, deps: RegistryDeps) -> None:
        self.deps = deps
        self.store = deps.store
        self.authn = deps.authn

    async def RecordInstanceAction(
        self, request: pb.RecordInstanceActionRequest, context: Ctx
    ) -> pb.RecordInstanceActionResponse:
        """Audit an action a data-plane service performed on an instance for a member."""
        # Only the data plane records what it did: a member's token could forge any entry.
        if not self.authn.is_service(context):
            raise PermissionDenied(
                "only the deployment's service token may record data-plane actions; they are "
                "audited when the data-plane call itself (e.g. ReplayDeadLetters) is made"
            )
        if request.action not in DATA_PLANE_ACTIONS:
            raise InvalidArgument.field(
                "action", f"must be one of {', '.join(sorted(DATA_PLANE_ACTIONS))}"
            )
        if not request.actor_member_id:
            raise InvalidArgument.field("actor_member_id", "required: the member acted for")
        required("instance_id", request.instance_id)
        async with self.store.transaction() as s:
            ins = await self.store.get(s, Instance, request.instance_id, "instance")
            actor = await self.store.get(s, Member, request.actor_member_id, "member")
            if actor.workspace_id != ins.workspace_id:
                raise InvalidArgument.field(
                    "actor_member_id", "is not a member of the instance's workspace"
                )
            entry = self.store.audit(
                s,
                workspace_id=ins.workspace_id,
                actor=actor,
                action=request.action,
                resource_type="instance",
                resource_id=ins.id,
                details=json_format.MessageToDict(request.details),
            )
            await s.flush()
        return pb.RecordInstanceActionResponse(event=convert.audit_event(entry))

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        """List the audit trail, newest first."""
        caller = await self.authn.caller(context)
        require(caller.is_owner, "read the audit trail (Workspace Owner only)")
        size = check_page_size(request.page_size)
        query = select(AuditEvent).where(AuditEvent.workspace_id == caller.workspace_id)
        if request.resource_id:
            query = query.where(AuditEvent.resource_id == request.resource_id)
        if request.HasField("start_time"):
            query = query.where(
                col(AuditEvent.created_at) >= request.start_time.ToDatetime(tzinfo=UTC)
            )
        async with self.store.transaction() as s:
            rows, token = await self.deps.pages.page(
                s,
                "ListAuditEvents",
                caller.workspace_id,
                request,
                query,
                (col(AuditEvent.id),),
                size,
                descending=True,
            )
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event(r) for r in rows], next_page_token=token
        )
