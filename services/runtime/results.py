"""Turn a worker's report (or a lost worker) into an InvocationResult."""

from __future__ import annotations

from typing import Any

import orjson

from .model import EventOutcome, Invocation, InvocationResult, LogLine, OutcomeKind, RequestTrace
from .outcomes import classify_batch, classify_single, memory_outcome, timeout_outcome


def loss_outcome(reason: str, timeout_s: float, memory_limit_mb: int) -> EventOutcome:
    """Return the outcome of an invocation whose worker was killed ("timeout", "memory") or died."""
    if reason == "timeout":
        return timeout_outcome(timeout_s)
    if reason == "memory":
        return memory_outcome(memory_limit_mb)
    return EventOutcome(OutcomeKind.FAILURE, "WorkerCrashed", "the function's worker process died")


def build_result(
    invocation: Invocation, reply: dict[str, Any], duration_ms: float
) -> InvocationResult:
    """Turn a worker's report into an InvocationResult."""
    if "internal" in reply:
        count = reply.get("n") or len(orjson.loads(invocation.events))
        failure = EventOutcome(OutcomeKind.FAILURE, "RuntimeInternalError", reply["internal"])
        return InvocationResult(outcomes=[failure] * count, duration_ms=duration_ms)
    raw = reply["r"]
    if invocation.batch:
        count = int(reply.get("n") or len(raw))
        outcomes = classify_batch(count, raw[0], reply.get("b"), invocation.timeout_s)
        values: list[object] | None = [reply.get("b")] if invocation.trace_bodies else None
    else:
        outcomes = [classify_single(r, invocation.timeout_s) for r in raw]
        values = reply.get("v")
    return InvocationResult(
        outcomes=outcomes,
        logs=[LogLine(level, message) for level, message in reply.get("l", [])],
        logs_truncated=bool(reply.get("ld")),
        requests=[_trace(t) for t in reply.get("q", [])],
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
    )
