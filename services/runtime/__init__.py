"""The function runtime: user JavaScript in V8 isolates, with Segment's destination environment."""

from .config import EgressConfig, RuntimeConfig
from .errors import InvalidInvocation, PoolClosedError, RuntimeFailure, WorkerStartError
from .model import (
    HANDLER_NAMES,
    EventOutcome,
    Invocation,
    InvocationResult,
    LogLine,
    OutcomeKind,
    RequestTrace,
    SyntaxProblem,
)
from .pool import RuntimePool

__all__ = [
    "HANDLER_NAMES",
    "EgressConfig",
    "EventOutcome",
    "InvalidInvocation",
    "Invocation",
    "InvocationResult",
    "LogLine",
    "OutcomeKind",
    "PoolClosedError",
    "RequestTrace",
    "RuntimeConfig",
    "RuntimeFailure",
    "RuntimePool",
    "SyntaxProblem",
    "WorkerStartError",
]
