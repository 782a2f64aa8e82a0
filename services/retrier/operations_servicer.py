"""google.longrunning.Operations for the retrier's replays, with the caller's own token: an
operation is visible to members of its workspace who may read its instance."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import empty_pb2

from eventfn_api.registry.v1 import registry_pb2 as rpb
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common import names
from services.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unimplemented,
)
from services.common.page_tokens import PageTokens
from services.common.registry_gate import RegistryGate
from services.common.roles import may_administer_source
from services.retrier.operations import Operations, ReplayRecord, operation_message

Ctx = grpc.aio.ServicerContext
WAIT_DEFAULT_SECONDS = 60.0
WAIT_MAX_SECONDS = 600.0


class OperationsServicer(operations_pb2_grpc.OperationsServicer):
    """GetOperation, ListOperations, WaitOperation, DeleteOperation over replay records."""

    def __init__(self, operations: Operations, gate: RegistryGate, pages: PageTokens) -> None:
        self._operations = operations
        self._gate = gate
        self._pages = pages

    async def _visible(self, context: Ctx, name: str) -> ReplayRecord:
        """Return an operation the caller may see; NOT_FOUND otherwise (like a missing one)."""
        record, _, _ = await self._seen_by(context, name)
        return record

    async def _seen_by(
        self, context: Ctx, name: str
    ) -> tuple[ReplayRecord, res.Instance, rpb.WhoAmIResponse]:
        """Return an operation the caller may see, its instance and the caller."""
        workspace_id, _ = names.parse_operation("name", name)
        me = await self._gate.whoami(context)
        missing = NotFound("operation", name)
        if names.last(me.workspace.name) != workspace_id:
            raise missing
        record = await self._operations.read(name)
        if record is None:
            raise missing
        try:
            instance = await self._gate.instance(context, record.instance)
        except (NotFound, PermissionDenied):
            raise missing from None
        return record, instance, me

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        """Return an operation as it is now."""
        return operation_message(await self._visible(context, request.name))

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Ctx
    ) -> operations_pb2.Operation:
        """Return an operation once it is done, or as it is when the timeout passes."""
        await self._visible(context, request.name)
        seconds = WAIT_DEFAULT_SECONDS
        if request.HasField("timeout"):
            seconds = request.timeout.ToTimedelta().total_seconds()
            if not 0 <= seconds <= WAIT_MAX_SECONDS:
                raise InvalidArgument.field("timeout", f"must be 0..{WAIT_MAX_SECONDS:.0f}s")
        record = await self._operations.wait(request.name, seconds)
        if record is None:
            raise NotFound("operation", request.name)
        return operation_message(record)

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Ctx
    ) -> operations_pb2.ListOperationsResponse:
        """List a workspace's replay operations, newest first (name: the collection,
        "workspaces/{workspace}/operations")."""
        parent = request.name.removesuffix("/operations")
        workspace_id = names.parse_workspace("name", parent)
        if request.filter:
            raise InvalidArgument.field("filter", "filters are not supported; leave it empty")
        me = await self._gate.whoami(context)
        if names.last(me.workspace.name) != workspace_id:
            raise NotFound("workspace", parent)
        size = min(request.page_size or 50, 500)
        if request.page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        last = self._pages.read("ListOperations", workspace_id, request)
        records = await self._operations.list(workspace_id)
        if last is not None:
            records = [r for r in records if (r.create_time, r.name) < (last[0], last[1])]
        visible = []
        readable: dict[str, bool] = {}  # by instance: the registry asked once per instance
        for record in records:
            if record.instance not in readable:
                try:
                    await self._gate.instance(context, record.instance)
                    readable[record.instance] = True
                except (NotFound, PermissionDenied):
                    readable[record.instance] = False
            if not readable[record.instance]:
                continue
            visible.append(record)
            if len(visible) > size:
                break
        token = ""
        if len(visible) > size:
            end = visible[size - 1]
            token = self._pages.issue(
                "ListOperations", workspace_id, request, [end.create_time, end.name]
            )
        return operations_pb2.ListOperationsResponse(
            operations=[operation_message(r) for r in visible[:size]], next_page_token=token
        )

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        """Forget a finished operation: as replaying, for Source Admins of its instance's
        source (a member who may only read it would erase its record for everyone)."""
        record, instance, me = await self._seen_by(context, request.name)
        if not may_administer_source(me.member, names.last(instance.source)):
            raise PermissionDenied(
                f"deleting a replay operation needs Source Admin of source {instance.source!r} "
                "(or Workspace Owner), as replaying does"
            )
        if not record.done:
            raise FailedPrecondition(
                "the operation is still running; delete it once it is done (WaitOperation)"
            )
        await self._operations.remove(request.name)
        return empty_pb2.Empty()

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Ctx
    ) -> empty_pb2.Empty:
        """Replays cannot be cancelled: each replayed letter is already stored again."""
        raise Unimplemented(
            "replays cannot be cancelled: the letters replayed so far are stored for their "
            "instance; wait for the operation (WaitOperation)"
        )
