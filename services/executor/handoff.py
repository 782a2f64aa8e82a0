"""Publish events that leave a pack: retryable ones to RETRY, finished ones to DEAD."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

import orjson
from nats.js import JetStreamContext
from nats.js.errors import APIError

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common import streams
from services.common.error_location import location_text
from services.common.once_per import OncePer
from services.common.packs import dedupe_id
from services.common.telemetry import PROPAGATOR
from services.executor.pack_ref import join_events
from services.executor.settlement import HandOff, last_logs, message_id_of
from services.runtime import InvocationResult, OutcomeKind

log = logging.getLogger(__name__)

MAX_HISTORY = 20
MAX_REQUESTS = 20
MAX_STACK_CHARS = 2000
MAX_URL_CHARS = 1000  # of each request's URL in LAST_REQUESTS (a function's may reach 64K)
# JetStream refuses a message whose headers pass 64 KB: a hand-off refused so was taken for
# NATS being down and handed back, at once, forever. What a hand-off carries to debug with
# gives way, largest first, until its headers fit this.
HEADER_BUDGET = 32 * 1024
_GIVES_WAY = {
    streams.LAST_REQUESTS: "[]",
    streams.HISTORY: "[]",
    streams.LAST_LOGS: '""',
    streams.LAST_STACK: '""',
}
VERB = {OutcomeKind.FAILURE: "failed", OutcomeKind.DISCARD: "discarded"}
# A refused hand-off (retries or dead letters full) is logged once per instance in this many
# seconds (a storm of them is the tenant's own doing and must not become one log line per pack).
FULL_LOG_SECONDS = 60.0


def dead_reason(handoff: HandOff) -> str:
    """Say why the executor dead-letters events: the outcome, the attempt, where, the error."""
    outcome = handoff.outcome
    where = location_text(outcome.stack or "")
    verb = VERB.get(outcome.kind, str(outcome.kind))
    text = f"{outcome.error_type}: {outcome.message}" if outcome.message else outcome.error_type
    return f"{verb} on attempt {handoff.ref.attempt}{f' at {where}' if where else ''}: {text}"


def full_reason(handoff: HandOff, limit: int) -> str:
    """Say why retryable events went to DEAD at once: their instance's retries were full."""
    return (
        f"retryable on attempt {handoff.ref.attempt} ({handoff.error}), but the instance "
        f"already holds as many retries as it may (EVENTFN_RETRY_MAX_PER_INSTANCE, {limit}): "
        "dead-lettered without retrying; replay them once the destination recovers"
    )


def handoff_headers(
    config: rpb.InstanceConfig,
    handoff: HandOff,
    result: InvocationResult,
    now: datetime,
    *,
    reason: str = "",
) -> dict[str, str]:
    """Return the headers of a RETRY or DEAD message: counts, history, last error and logs,
    the version a replay pinned; a DEAD message's reason is `reason`, or the outcome's."""
    ref, outcome, error = handoff.ref, handoff.outcome, handoff.error
    ids = [message_id_of(e) for e in handoff.events]
    history = orjson.loads(ref.history) if ref.history else []
    history.append(
        {
            "attempt": ref.attempt,
            "time": now.isoformat(),
            "outcome": outcome.kind.value,
            "type": (outcome.error_type or "")[:200],
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
                    "url": t.url if len(t.url) <= MAX_URL_CHARS else t.url[:MAX_URL_CHARS] + "…",
                    "status": t.status,
                    "error": t.error,
                    "duration_ms": t.duration_ms,
                }
                for t in result.requests[-MAX_REQUESTS:]
            ]
        ).decode(),
    }
    if ref.version:  # a replay pinned to a version: its retries run that version too
        headers[streams.VERSION] = ref.version
    if handoff.kind == "dead":
        headers[streams.DEAD_REASON] = (reason or dead_reason(handoff))[:1000]
    if ref.trace is not None:  # the retry continues the event's trace
        PROPAGATOR.inject(headers, context=ref.trace)
    return within_budget(headers)


def header_bytes(headers: dict[str, str]) -> int:
    """Return about what headers take in a NATS message (name, ": ", value, CRLF)."""
    return sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


def within_budget(headers: dict[str, str]) -> dict[str, str]:
    """Empty the debugging headers, largest first, until the headers fit HEADER_BUDGET."""
    size = header_bytes(headers)
    for name in sorted(_GIVES_WAY, key=lambda n: -len(headers.get(n, "").encode())):
        if size <= HEADER_BUDGET:
            break
        if name in headers:
            size -= len(headers[name].encode()) - len(_GIVES_WAY[name])
            headers[name] = _GIVES_WAY[name]
    return headers


class Handoff:
    """Store events durably elsewhere: retryable ones in RETRY, finished ones in DEAD.

    RETRY holds at most `retry_limit` messages per instance (the stream's per-subject limit);
    an instance's retryable events past it go to DEAD at once, saying why, rather than back
    to EVENTS for another invocation. DEAD holds a limited number per instance too
    (EVENTFN_DEAD_MAX_PER_INSTANCE): past it, the events are discarded, logged with the reason
    (once a minute per instance), and their pack is settled; the letters it holds are kept.
    """

    def __init__(
        self, js: JetStreamContext, retry_limit: int = streams.DEFAULT_RETRY_MAX_PER_INSTANCE
    ) -> None:
        self._js = js
        self._retry_limit = retry_limit
        self._full_logged = OncePer(FULL_LOG_SECONDS)
        self._dead_full_logged = OncePer(FULL_LOG_SECONDS)
        self.discarded = 0  # events discarded because their instance's dead letters were full

    async def __call__(
        self, config: rpb.InstanceConfig, handoff: HandOff, result: InvocationResult
    ) -> None:
        """Publish one message for events of one pack, with their history (awaiting the ack)."""
        now = datetime.now(UTC)
        body = join_events(handoff.events)
        ws, iid = config.workspace_id, config.id
        if handoff.kind == "retry":
            try:
                headers = handoff_headers(config, handoff, result, now)
                await self._js.publish(streams.retry_subject(ws, iid), body, headers=headers)
                return
            except APIError as error:
                if not streams.subject_full(error):
                    raise
            if self._full_logged.due(iid):
                log.warning(
                    "instance %s holds as many retries as it may "
                    "(EVENTFN_RETRY_MAX_PER_INSTANCE, %d): its retryable events are "
                    "dead-lettered at once",
                    iid,
                    self._retry_limit,
                )
            dead = dataclasses.replace(handoff, kind="dead")
            reason = full_reason(handoff, self._retry_limit)
            headers = handoff_headers(config, dead, result, now, reason=reason)
        else:
            headers = handoff_headers(config, handoff, result, now)
        try:
            await self._js.publish(streams.dead_subject(ws, iid), body, headers=headers)
        except APIError as error:
            if not streams.subject_full(error):
                raise
            self.discarded += len(handoff.events)
            if self._dead_full_logged.due(iid):
                log.warning(
                    "instance %s holds as many packs of dead letters as it may "
                    "(EVENTFN_DEAD_MAX_PER_INSTANCE): failed events discarded, %d of this "
                    "pack (%s), and so are its next ones until some of its dead letters are "
                    "replayed, purged or expire (said once a minute per instance)",
                    iid,
                    len(handoff.events),
                    headers.get(streams.DEAD_REASON, ""),
                )
