"""Turn a worker's report (or a lost worker) into an InvocationResult."""

from __future__ import annotations

from typing import Any

import orjson

from .model import EventOutcome, Invocation, InvocationResult, LogLine, OutcomeKind, RequestTrace
from .outcomes import classify_batch, classify_single, memory_outcome, timeout_outcome
from .protocol import RunReply


def count_events(events: bytes) -> int:
    """Count the events of an invocation's payload (a JSON array, or one event)."""
    parsed = orjson.loads(events)
    return len(parsed) if isinstance(parsed, list) else 1


def loss_outcome(reason: str, timeout_s: float, memory_limit_mb: int) -> EventOutcome:
    """Return the outcome of an invocation whose worker was killed or died (see `Lost`)."""
    if reason == "timeout":
        return timeout_outcome(timeout_s)
    if reason == "memory":
        return memory_outcome(memory_limit_mb)
    if reason == "bystander":
        return EventOutcome(
            OutcomeKind.RETRY,
            "WorkerLost",
            "the worker running this invocation was stopped (another invocation on it, of this "
            "function or another, passed its limits) after this one had sent requests; it is "
            "retried",
        )
    if reason == "busy":
        return EventOutcome(
            OutcomeKind.RETRY,
            "WorkerBusy",
            "every worker this invocation was given was held by other long calls; it did not "
            "run, and is retried",
        )
    return EventOutcome(OutcomeKind.FAILURE, "WorkerCrashed", "the function's worker process died")


def _failed(count: int, error_type: str, message: str, duration_ms: float) -> InvocationResult:
    failure = EventOutcome(OutcomeKind.FAILURE, error_type, message)
    return InvocationResult(outcomes=[failure] * count, duration_ms=duration_ms)


def build_result(
    invocation: Invocation, count: int, reply: RunReply, duration_ms: float
) -> InvocationResult:
    """Turn a worker's reply for an invocation of `count` events into an InvocationResult."""
    if "internal" in reply:
        return _failed(count, "RuntimeInternalError", reply["internal"], duration_ms)
    raw = reply["results"]
    if "rejected" in reply or len(raw) != (1 if invocation.batch else count):
        why = reply.get("rejected") or f"{len(raw)} results for {count} events"
        message = (
            f"the function's code interfered with the runtime ({why}); a function must not "
            "replace or reach into the runtime's internals"
        )
        return _failed(count, "RuntimeTampered", message, duration_ms)
    if invocation.batch:
        batch_value = reply.get("batch_value")
        outcomes = classify_batch(count, raw[0], batch_value, invocation.timeout_s)
        values: list[object] | None = [batch_value] if invocation.trace_bodies else None
    else:
        outcomes = [classify_single(r, invocation.timeout_s) for r in raw]
        values = reply.get("values")
    return InvocationResult(
        outcomes=outcomes,
        logs=[LogLine(level, message) for level, message in reply["logs"]],
        logs_truncated=bool(reply["logs_dropped"]),
        requests=[_trace(t) for t in reply["requests"]],
        duration_ms=duration_ms,
        values=values,
    )


def _trace(t: dict[str, Any]) -> RequestTrace:
    return RequestTrace(
        method=t["method"],
        url=t["url"],
        status=t.get("status"),
        duration_ms=float(t.get("duration_ms", 0.0)),
        error=t.get("error"),
        request_headers=tuple((k, v) for k, v in t.get("request_headers") or ()),
        request_body=t.get("request_body"),
        response_headers=tuple((k, v) for k, v in t.get("response_headers") or ()),
        response_body=t.get("response_body"),
        body_truncated=bool(t.get("body_truncated")),
        start_ns=int(t.get("start_ns") or 0),
    )
