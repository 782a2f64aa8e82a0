"""Registry RPCs of the audit trail: reading it, and recording data-plane actions."""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from sqlmodel import col, select

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.request_times import request_time
from services.registry import convert
from services.registry.auth import require
from services.registry.deps import RegistryDeps
from services.registry.idempotency import SERVICE_CALLER, request_key
from services.registry.models import AuditEvent, Instance, Member
from services.registry.validation import check_page_size

Ctx = grpc.aio.ServicerContext
# Actions data-plane services perform for a member and record with the service token.
DATA_PLANE_ACTIONS = frozenset(
    {res.AUDIT_ACTION_DEAD_LETTERS_REPLAY, res.AUDIT_ACTION_DEAD_LETTERS_PURGE}
)


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
                "action",
                "must be one of "
                + ", ".join(res.AuditAction.Name(a) for a in sorted(DATA_PLANE_ACTIONS)),
            )
        instance_id = names.parse("instance", request.instance, names.INSTANCE, None)
        if not request.actor:
            raise InvalidArgument.field("actor", "required: the member acted for")
        actor_id = names.parse("actor", request.actor, names.MEMBER, None)
        async with self.store.transaction() as s:
            ins = await s.get(Instance, instance_id)
            if ins is None or request.instance.split("/")[1] != ins.workspace_id:
                raise NotFound("instance", request.instance)
        key = request_key(ins.workspace_id, SERVICE_CALLER, "RecordInstanceAction", request)
        return await self.deps.idempotency.once(
            key,
            pb.RecordInstanceActionResponse,
            lambda: self._record(request, ins.id, actor_id, key),
        )

    async def _record(
        self, request: pb.RecordInstanceActionRequest, instance_id: str, actor_id: str, key
    ) -> pb.RecordInstanceActionResponse:
        async with self.store.transaction() as s:
            ins = await self.store.get(s, Instance, instance_id, "instance")
            actor = await s.get(Member, actor_id)
            if actor is None:
                raise NotFound("member", request.actor)
            if actor.workspace_id != ins.workspace_id:
                raise InvalidArgument.field("actor", "is not a member of the instance's workspace")
            entry = self.store.audit(
                s,
                workspace_id=ins.workspace_id,
                actor=actor,
                action=convert.stored_action(request.action),
                resource_type="instance",
                resource_id=ins.id,
                details=json_format.MessageToDict(request.details),
            )
            await s.flush()
            response = pb.RecordInstanceActionResponse(event=convert.audit_event(entry))
            await self.deps.idempotency.save(s, key, response)
        return response

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: Ctx
    ) -> pb.ListAuditEventsResponse:
        """List the audit trail, newest first."""
        caller = await self.authn.caller(context)
        names.parent("parent", request.parent, caller.workspace_id)
        require(caller.is_owner, "read the audit trail (Workspace Owner only)")
        size = check_page_size(request.page_size)
        query = select(AuditEvent).where(AuditEvent.workspace_id == caller.workspace_id)
        if request.resource:
            own = names.workspace(caller.workspace_id)
            if request.resource != own and not request.resource.startswith(own + "/"):
                raise InvalidArgument.field(
                    "resource", f"must be the name of a resource of {own}, or {own} itself"
                )
            query = query.where(AuditEvent.resource_id == request.resource.rsplit("/", 1)[-1])
        if request.HasField("start_time"):
            query = query.where(
                col(AuditEvent.created_at) >= request_time("start_time", request.start_time)
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
