"""Authorization of data-plane RPCs by the registry: the caller's token is forwarded, so the
one place that knows members and tokens decides (and another workspace's object stays
NOT_FOUND). Decisions on roles the registry has no RPC for are made over WhoAmI's roles by
`services.common.roles`. Only the audit record of a data-plane action goes with the
deployment's service token, naming the member it was done for.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from eventfn_api.registry.v1 import registry_pb2 as pb
from eventfn_api.registry.v1 import registry_pb2_grpc
from eventfn_api.registry.v1 import resources_pb2 as res
from services.common.errors import (
    EventfnError,
    FieldViolation,
    NotFound,
    PermissionDenied,
    Relayed,
    Unauthenticated,
    Unavailable,
)
from services.common.rpc import CLIENT_OPTIONS, bearer_token

# Only these mean "the registry could not answer now": the caller may retry. Every other code
# is the registry's verdict on the request (a client error, or a bug behind INTERNAL) and is
# passed on as it is, so a client is never told to retry a request that cannot succeed.
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)


def relayed(error: grpc.aio.AioRpcError) -> EventfnError:
    """Turn the registry's answer into the error to give the caller, details included."""
    code = error.code()
    if code in _TRANSIENT:
        return Unavailable(f"the registry did not answer ({code.name}); retry later")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(error.details() or code.name)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(error.details() or code.name)
    reason, metadata, violations = code.name, {}, []
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason or reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return Relayed(
        code,
        error.details() or code.name,
        reason=reason,
        metadata=metadata,
        violations=violations,
    )


class RegistryGate:
    """Ask the registry, with the caller's own token, whether the caller may see an object."""

    def __init__(self, registry_addr: str, *, service_token: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(registry_addr, options=CLIENT_OPTIONS)
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._service_token = service_token

    def _metadata(self, context: grpc.aio.ServicerContext) -> tuple[tuple[str, str], ...]:
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
        return (("authorization", f"Bearer {token}"),)

    async def _call(self, coro, kind: str, object_id: str):
        try:
            return await coro
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(kind, object_id) from error
            raise relayed(error) from error

    async def instance(self, context: grpc.aio.ServicerContext, name: str) -> res.Instance:
        """Return the instance if the caller may read it; raise like the registry otherwise."""
        reply = await self._call(
            self._stub.GetInstance(  # pyright: ignore[reportAttributeAccessIssue]
                pb.GetInstanceRequest(name=name), metadata=self._metadata(context)
            ),
            "instance",
            name,
        )
        return reply.instance

    async def readable_instance(
        self, context: grpc.aio.ServicerContext, name: str
    ) -> res.Instance | None:
        """Return the instance if the caller may read it, None when it is not the caller's to
        see (another workspace's, deleted, or outside its roles); raise on anything else."""
        try:
            return await self.instance(context, name)
        except EventfnError as error:
            if error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                return None
            raise

    async def function(
        self, context: grpc.aio.ServicerContext, name: str
    ) -> pb.GetFunctionResponse:
        """Return the function if the caller may read it; raise like the registry otherwise."""
        return await self._call(
            self._stub.GetFunction(  # pyright: ignore[reportAttributeAccessIssue]
                pb.GetFunctionRequest(name=name), metadata=self._metadata(context)
            ),
            "function",
            name,
        )

    async def version(self, context: grpc.aio.ServicerContext, name: str) -> res.FunctionVersion:
        """Return a function version if the caller may read its function."""
        reply = await self._call(
            self._stub.GetFunctionVersion(  # pyright: ignore[reportAttributeAccessIssue]
                pb.GetFunctionVersionRequest(name=name), metadata=self._metadata(context)
            ),
            "version",
            name,
        )
        return reply.version

    async def whoami(self, context: grpc.aio.ServicerContext) -> pb.WhoAmIResponse:
        """Return the caller, or raise Unauthenticated."""
        return await self._call(
            self._stub.WhoAmI(pb.WhoAmIRequest(), metadata=self._metadata(context)),  # pyright: ignore[reportAttributeAccessIssue]
            "member",
            "",
        )

    async def record(
        self,
        actor: str,
        instance: str,
        action: int,
        details: dict[str, Any],
        request_id: str = "",
    ) -> None:
        """Write a data-plane action done on an instance for `actor` (a member's name) to the
        audit trail (once per request_id)."""
        if not self._service_token:
            raise RuntimeError("RegistryGate needs the service token to record actions")
        values = struct_pb2.Struct()
        values.update(details)
        await self._call(
            self._stub.RecordInstanceAction(  # pyright: ignore[reportAttributeAccessIssue]
                pb.RecordInstanceActionRequest(
                    instance=instance,
                    action=action,  # type: ignore[arg-type]
                    details=values,
                    actor=actor,
                    request_id=request_id,
                ),
                metadata=(("authorization", f"Bearer {self._service_token}"),),
            ),
            "instance",
            instance,
        )

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()
