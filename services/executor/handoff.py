"""Publish events that leave a pack: retryable ones to RETRY, finished ones to DEAD."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from nats.js import JetStreamContext

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common import streams
from services.common.error_location import location_text
from services.common.packs import dedupe_id
from services.common.telemetry import PROPAGATOR
from services.executor.pack_ref import join_events
from services.executor.settlement import HandOff, last_logs, message_id_of
from services.runtime import InvocationResult, OutcomeKind

MAX_HISTORY = 20
MAX_REQUESTS = 20
MAX_STACK_CHARS = 2000
VERB = {OutcomeKind.FAILURE: "failed", OutcomeKind.DISCARD: "discarded"}


def dead_reason(handoff: HandOff) -> str:
    """Say why the executor dead-letters events: the outcome, the attempt, where, the error."""
    outcome = handoff.outcome
    where = location_text(outcome.stack or "")
    verb = VERB.get(outcome.kind, str(outcome.kind))
    text = f"{outcome.error_type}: {outcome.message}" if outcome.message else outcome.error_type
    return f"{verb} on attempt {handoff.ref.attempt}{f' at {where}' if where else ''}: {text}"


def handoff_headers(
    config: rpb.InstanceConfig, handoff: HandOff, result: InvocationResult, now: datetime
) -> dict[str, str]:
    """Return the headers of a RETRY or DEAD message: counts, history, last error and logs."""
    ref, outcome, error = handoff.ref, handoff.outcome, handoff.error
    ids = [message_id_of(e) for e in handoff.events]
    history = orjson.loads(ref.history) if ref.history else []
    history.append(
        {
            "attempt": ref.attempt,
            "time": now.isoformat(),
            "outcome": outcome.kind.value,
            "type": outcome.error_type or "",
            "error": error[:500],
        }
    )
    headers = {
        # The EVENTS sequence names this delivery: a redelivered pack hands off the same
        # events under the same id (deduplicated), a replayed or retried one under a new id.
        streams.MSG_ID: f"{dedupe_id(config.id, ids)}:{ref.seq}:{handoff.kind}{ref.attempt}",
        streams.COUNT: str(len(handoff.events)),
        streams.ATTEMPT: str(ref.attempt),
        streams.FIRST_ATTEMPT_AT: ref.first_attempt_at,
        streams.LAST_ERROR: error[:1000],
        streams.HISTORY: orjson.dumps(history[-MAX_HISTORY:]).decode(),
        # JSON-encoded: header values cannot hold line breaks.
        streams.LAST_LOGS: orjson.dumps(last_logs(result)).decode(),
        streams.LAST_STACK: orjson.dumps((outcome.stack or "")[:MAX_STACK_CHARS]).decode(),
        streams.LAST_REQUESTS: orjson.dumps(
            [
                {
                    "method": t.method,
                    "url": t.url,
                    "status": t.status,
                    "error": t.error,
                    "duration_ms": t.duration_ms,
                }
                for t in result.requests[-MAX_REQUESTS:]
            ]
        ).decode(),
    }
    if handoff.kind == "dead":
        headers[streams.DEAD_REASON] = dead_reason(handoff)[:1000]
    if ref.trace is not None:  # the retry continues the event's trace
        PROPAGATOR.inject(headers, context=ref.trace)
    return headers


class Handoff:
    """Store events durably elsewhere: retryable ones in RETRY, finished ones in DEAD."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def __call__(
        self, config: rpb.InstanceConfig, handoff: HandOff, result: InvocationResult
    ) -> None:
        """Publish one message for events of one pack, with their history (awaiting the ack)."""
        headers = handoff_headers(config, handoff, result, datetime.now(UTC))
        subject = (streams.retry_subject if handoff.kind == "retry" else streams.dead_subject)(
            config.workspace_id, config.id
        )
        await self._js.publish(subject, join_events(handoff.events), headers=headers)
