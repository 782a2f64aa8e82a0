"""Classify what a function did into per-event outcomes (pure; the reference's error table)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .model import EventOutcome, OutcomeKind

RETRY_ERRORS = frozenset({"RetryError"})
DISCARD_ERRORS = frozenset({"EventNotSupported", "InvalidEventPayload", "ValidationError"})
INVALID_BATCH_RESULT = "InvalidBatchResult"
MAX_ERROR_MESSAGE = 8 * 1024  # characters of an outcome's message

RUNTIME_SCRIPT = "eventfn-runtime.js"

DELIVERED = EventOutcome(OutcomeKind.DELIVERED)


def _user_stack(stack: str) -> str:
    # Frames of the runtime itself say nothing to the function's author.
    return "\n".join(line for line in stack.split("\n") if RUNTIME_SCRIPT not in line)


def classify_error(error: Mapping[str, object]) -> EventOutcome:
    """Map a thrown value (as described by the runtime) to an outcome."""
    cls = error.get("cls")
    name = str(error.get("name") or "Error")
    message = str(error.get("message") or "")
    stack = _user_stack(str(error.get("stack") or "")) or None
    if cls in RETRY_ERRORS:
        return EventOutcome(OutcomeKind.RETRY, str(cls), message, stack)
    if cls in DISCARD_ERRORS:
        return EventOutcome(OutcomeKind.DISCARD, str(cls), message, stack)
    return EventOutcome(OutcomeKind.FAILURE, name, message, stack)


def timeout_outcome(timeout_s: float) -> EventOutcome:
    """Return the (retryable) outcome of an event that did not finish in time."""
    return EventOutcome(
        OutcomeKind.RETRY, "Timeout", f"the function did not finish within {timeout_s:g} s"
    )


def memory_outcome(limit_mb: int) -> EventOutcome:
    """Return the outcome of an event whose invocation passed the memory limit."""
    return EventOutcome(
        OutcomeKind.FAILURE,
        "MemoryLimitExceeded",
        f"the function used more than its memory limit of {limit_mb} MB",
    )


def invalid_settings_outcome(message: str) -> EventOutcome:
    """Return the outcome of an event whose instance settings do not fit the schema."""
    return EventOutcome(OutcomeKind.DISCARD, "InvalidSettings", message)


def cut_text(text: str, cap: int = MAX_ERROR_MESSAGE) -> str:
    """Return `text` cut to `cap` characters, an ellipsis last when cut."""
    return text if len(text) <= cap else text[: cap - 1] + "…"


def status_outcome(status: object, message: object) -> EventOutcome:
    """Map one element of onBatch's returned status array to an outcome."""
    # Both come redacted whole from the worker: cutting them leaves no secret's beginning.
    text = None if message is None else cut_text(str(message))
    if isinstance(status, bool) or not isinstance(status, int):
        return EventOutcome(
            OutcomeKind.FAILURE,
            INVALID_BATCH_RESULT,
            f"status {cut_text(repr(status), 100)} is not an HTTP status",
        )
    if 200 <= status < 300:
        return EventOutcome(OutcomeKind.DELIVERED, status=status, message=text)
    if status == 429 or 500 <= status < 600:
        return EventOutcome(OutcomeKind.RETRY, f"HTTP {status}", text, status=status)
    if 400 <= status < 500:
        return EventOutcome(OutcomeKind.DISCARD, f"HTTP {status}", text, status=status)
    return EventOutcome(
        OutcomeKind.FAILURE,
        INVALID_BATCH_RESULT,
        f"status {status} is not a 2xx, 4xx or 5xx status",
        status=status,
    )


def classify_single(raw: object, timeout_s: float) -> EventOutcome:
    """Classify one single-event handler result: 0 done, 2 unfinished, or an error object."""
    if raw == 0:
        return DELIVERED
    if isinstance(raw, Mapping):
        return classify_error(raw)
    return timeout_outcome(timeout_s)


def classify_batch(count: int, raw: object, value: object, timeout_s: float) -> list[EventOutcome]:
    """Classify an onBatch call: a thrown error applies to all, a status array per event."""
    if raw != 0:
        return [classify_single(raw, timeout_s)] * count
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return [DELIVERED] * count
    if all(v is None for v in value):
        # e.g. `return Promise.all(promises)` of void sub-batches: no statuses were meant.
        return [DELIVERED] * count
    if len(value) != count:
        problem = (
            f"onBatch returned {len(value)} statuses for {count} events; return one "
            "{status, errormessage} object per event, in order"
        )
        return [EventOutcome(OutcomeKind.FAILURE, INVALID_BATCH_RESULT, problem)] * count
    if not all(isinstance(v, Mapping) and "status" in v for v in value):
        problem = (
            "onBatch returned a status array whose elements are not all "
            "{status, errormessage} objects"
        )
        return [EventOutcome(OutcomeKind.FAILURE, INVALID_BATCH_RESULT, problem)] * count
    return [status_outcome(v.get("status"), v.get("errormessage")) for v in value]
