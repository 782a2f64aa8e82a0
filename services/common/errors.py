"""Domain errors shared by every service, and their ONE mapping to gRPC status codes.

Servicers raise these; `ServerGate` (see `rpc.py`) turns them into `google.rpc.Status`
with details. Messages say what was wrong and how to fix it (AIP-193).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path and what is wrong with it."""

    field: str
    description: str


class EventfnError(Exception):
    """Base of every error a caller may see; carries its gRPC code and a reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Machine-readable facts for google.rpc.ErrorInfo's metadata (e.g. the current etag).
        self.metadata: Mapping[str, str] = {}


class InvalidArgument(EventfnError):
    """The request is malformed; `violations` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message)
        self.violations = tuple(violations) or (FieldViolation("", message),)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """Build the error for a single bad field."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])


class NotFound(EventfnError):
    """The object does not exist, or belongs to another workspace (indistinguishably)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"

    def __init__(self, kind: str, object_id: str, hint: str = "") -> None:
        """`hint`: what the caller may do about it, added to the message."""
        super().__init__(f"{kind} {object_id!r} not found" + (f": {hint}" if hint else ""))
        self.kind = kind
        self.object_id = object_id


class AlreadyExists(EventfnError):
    """An object with the same unique name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class Unauthenticated(EventfnError):
    """No valid credentials came with the call."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(EventfnError):
    """The caller is known but its roles do not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class ResourceExhausted(EventfnError):
    """The caller used up a budget: a rate, safe to retry after `retry_after` seconds (which
    the status carries as google.rpc.RetryInfo), or a quota (None: waiting changes nothing)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FailedPrecondition(EventfnError):
    """The system is not in a state that allows the call (e.g. dependents exist)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class Aborted(EventfnError):
    """A concurrent change won; re-read and retry (e.g. a stale expected_revision)."""

    code = grpc.StatusCode.ABORTED
    reason = "ABORTED"


class EtagMismatch(Aborted):
    """The caller's etag is not the resource's current one: it changed since it was read.

    ErrorInfo carries reason ETAG_MISMATCH and the metadata `resource` and `current_etag`,
    so a client can re-read (or decide) without parsing the message.
    """

    reason = "ETAG_MISMATCH"

    def __init__(self, resource: str, given: str, current: str) -> None:
        super().__init__(
            f"{resource} changed since it was read: its etag is now {current!r}, not {given!r}; "
            "re-read it, re-apply the change and send the new etag"
        )
        self.metadata = {"resource": resource, "current_etag": current}


class RequestIdReused(InvalidArgument):
    """A request_id came again with a different request (AIP-155): refused, nothing done."""

    reason = "REQUEST_ID_REUSED"

    def __init__(self, method: str) -> None:
        super().__init__(
            f"request_id: already used for a different {method} request in the last 24 hours; "
            "a retry must send the same request, a new request needs a new request_id",
            [FieldViolation("request_id", "already used for a different request")],
        )


class Relayed(EventfnError):
    """An error another eventfn service answered, passed on with its code and details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        metadata: Mapping[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = tuple(violations)


class Unimplemented(EventfnError):
    """The method is part of a standard interface the service does not support."""

    code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class Unavailable(EventfnError):
    """A dependency is down or the service is not ready; safe to retry later."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class Internal(EventfnError):
    """An unexpected failure (a bug): the caller gets only a correlation id to quote.

    The failure's own text stays in the server log next to the same id: it may hold SQL,
    stored values or secrets, so it never reaches the caller.
    """

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"

    def __init__(self, correlation_id: str) -> None:
        super().__init__(
            f"internal error (correlation id {correlation_id}); the service logged the "
            "details under that id: report it to the operator"
        )
        self.correlation_id = correlation_id
