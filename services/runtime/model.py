"""The runtime's public data: invocations in, per-event outcomes, logs and traces out."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

HANDLER_NAMES = (
    "onTrack",
    "onIdentify",
    "onPage",
    "onScreen",
    "onGroup",
    "onAlias",
    "onDelete",
    "onBatch",
)


class OutcomeKind(StrEnum):
    """What happens to an event after its invocation."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DISCARD = "discard"
    FAILURE = "failure"


# How the owner of every preview's context key begins (see `owner_of`).
PREVIEW_OWNER = "preview"


def owner_of(function_key: str) -> str:
    """Return whose a context key is: its instance ("<instance>:<version>:<revision>"), or
    "preview-<workspace>" for a workspace's previews ("preview" for the CLI's own). A
    quarantine covers the owner, so that no new key (an edit of the instance, another
    preview) lifts it, and fetches share connections by owner."""
    return function_key.partition(":")[0]


@dataclass(frozen=True)
class Invocation:
    """One call into a function: many events, one crossing (plus fetch rounds)."""

    # One V8 context per key: the executor uses "<instance>:<version>:<revision>", so no
    # global ever carries one instance's settings into another's invocation.
    function_key: str
    code: str
    events: bytes  # JSON array of events exactly as received (not parsed in Python)
    settings: dict[str, object]
    batch: bool  # True: one onBatch(events, settings); False: each event to its handler
    timeout_s: float = 5.0
    secrets: tuple[str, ...] = ()  # values to redact from logs and request traces
    # Preview only: keep handler return values and request/response bodies in traces.
    trace_bodies: bool = False
    log_cap_bytes: int | None = None
    # How many events `events` holds, when the caller knows (else the pool parses to count):
    # the number of results the function's report must carry.
    count: int | None = None
    # Headers added to every request the function makes unless it set them itself: the W3C
    # trace context of the invocation ("traceparent", "tracestate"), when its instance asks.
    trace_headers: tuple[tuple[str, str], ...] = ()
    # Whose instances share one share of a worker's fetch connections (the workspace; ""
    # for none: the instance alone): many instances of one tenant take no more than one.
    tenant: str = ""


@dataclass(frozen=True)
class EventOutcome:
    """The outcome of one event (or of every event of an onBatch call)."""

    kind: OutcomeKind
    error_type: str | None = None
    message: str | None = None
    stack: str | None = None
    status: int | None = None  # onBatch per-event status, when the handler returned one


@dataclass(frozen=True)
class LogLine:
    """One console call of the function."""

    level: str
    message: str


@dataclass(frozen=True)
class RequestTrace:
    """One outgoing request made with fetch, and its response or error."""

    method: str
    url: str
    status: int | None
    duration_ms: float
    error: str | None = None
    request_headers: tuple[tuple[str, str], ...] = ()
    request_body: str | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body: str | None = None
    body_truncated: bool = False
    start_ns: int = 0  # wall-clock start (time.time_ns()), for the fetch's trace span


@dataclass(frozen=True)
class InvocationResult:
    """Per-event outcomes (outcomes[i] is event i) and what the invocation produced."""

    outcomes: list[EventOutcome]
    logs: list[LogLine] = field(default_factory=list)
    logs_truncated: bool = False
    requests: list[RequestTrace] = field(default_factory=list)
    duration_ms: float = 0.0
    # Handler return values (trace_bodies only): one per event, or the onBatch value.
    values: list[object] | None = None


@dataclass(frozen=True)
class SyntaxProblem:
    """Where a function's code fails to parse (1-based line and column)."""

    line: int
    column: int
    message: str
