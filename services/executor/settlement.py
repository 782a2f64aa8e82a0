"""From an invocation's outcomes to records, hand-offs (RETRY, DEAD) and settled packs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common.deliveries.recorder import DeliveryRecorder, FailureSample
from services.common.error_location import describe_error
from services.common.once_per import OncePer
from services.executor.pack_ref import PackRef, split_pack
from services.executor.policy import Disposition, disposition
from services.runtime import EventOutcome, InvocationResult, OutcomeKind, RequestTrace
from services.runtime.outcomes import MAX_ERROR_MESSAGE, cut_text
from services.runtime.report import MAX_ERROR_NAME, MAX_ERROR_STACK

log = logging.getLogger(__name__)

MAX_LOG_CHARS = 4096
# Of an invocation's requests (up to 10,000, URLs of 64 KB, quoted again in a failed one's
# error), a failure sample keeps the last MAX_SAMPLE_REQUESTS (as a dead letter's
# LAST_REQUESTS), URLs cut to MAX_SAMPLE_URL_CHARS and errors to MAX_SAMPLE_ERROR_CHARS: whole,
# they made samples of 36 MB, one per failed event of the invocation.
MAX_SAMPLE_REQUESTS = 20
MAX_SAMPLE_URL_CHARS = 1024
MAX_SAMPLE_ERROR_CHARS = 2 * MAX_SAMPLE_URL_CHARS  # room for the URL it quotes, and why
# A failed hand-off is logged once per instance in this many seconds (while a stream refuses
# them, every pack of the instance fails alike each time it comes).
FAILED_LOG_SECONDS = 60.0
COUNTER_OF = {
    OutcomeKind.DELIVERED: "delivered",
    OutcomeKind.RETRY: "retried",
    OutcomeKind.DISCARD: "discarded",
    OutcomeKind.FAILURE: "failed",
}


@dataclass
class HandOff:
    """Events of one pack that leave it for RETRY or DEAD, with the first one's outcome."""

    kind: Disposition  # "retry" or "dead"
    ref: PackRef
    outcome: EventOutcome
    events: list[bytes] = field(default_factory=list)

    @property
    def error(self) -> str:
        """Return the outcome's error as `Type: message (function.js:LINE:COL)`."""
        o = self.outcome
        return describe_error(o.error_type or "", o.message or "", o.stack or "")


# Store handed-off events durably (awaiting the stream's ack); raise when it cannot.
Handoff = Callable[[rpb.InstanceConfig, HandOff, InvocationResult], Awaitable[None]]


def last_logs(result: InvocationResult) -> str:
    """Return an invocation's console output (already redacted), capped from the end."""
    text = "\n".join(f"{line.level}: {line.message}" for line in result.logs)
    return text[-MAX_LOG_CHARS:]


def sample_requests(requests: Sequence[RequestTrace]) -> list[dict[str, Any]]:
    """Return what a failure sample keeps of an invocation's requests: the last
    MAX_SAMPLE_REQUESTS, short, after an entry (no method, no URL) saying how many earlier ones
    were left out; only the fields ListDeliveryFailures reads."""
    kept = requests[-MAX_SAMPLE_REQUESTS:]
    out: list[dict[str, Any]] = []
    if len(requests) > len(kept):
        omitted = len(requests) - len(kept)
        out.append(
            {
                "method": "",
                "url": "",
                "status": None,
                "error": f"{omitted:,} earlier requests of this invocation not kept (a failure "
                f"sample keeps its last {MAX_SAMPLE_REQUESTS})",
                "duration_ms": 0.0,
            }
        )
    for t in kept:
        url = cut_text(t.url, MAX_SAMPLE_URL_CHARS)
        error = t.error
        if error and url != t.url:  # a failed fetch's error quotes its URL: cut there too
            error = error.replace(t.url, url)
        out.append(
            {
                "method": t.method,
                "url": url,
                "status": t.status,
                "error": cut_text(error, MAX_SAMPLE_ERROR_CHARS) if error else error,
                "duration_ms": t.duration_ms,
            }
        )
    return out


def message_id_of(event: bytes) -> str:
    """Return an encoded event's messageId ("" when it has none)."""
    value = orjson.loads(event) if event else None
    return str(value.get("messageId", "")) if isinstance(value, dict) else ""


class Settlement:
    """Act on outcomes: count and sample them, hand events off, settle their packs."""

    def __init__(self, recorder: DeliveryRecorder, handoff: Handoff) -> None:
        self._recorder = recorder
        self._handoff = handoff
        self._failed_logged = OncePer(FAILED_LOG_SECONDS)

    async def act(
        self,
        config: rpb.InstanceConfig,
        body: bytes,
        refs: list[PackRef],
        result: InvocationResult,
    ) -> None:
        """Record each event's outcome, store the ones that leave, settle the packs.

        `refs[i]` is the pack of event i of `body`; `result.outcomes[i]` its outcome.
        """
        outcomes = result.outcomes
        if len(outcomes) != len(refs):
            log.error(
                "instance %s: %d outcomes for %d events; packs handed back",
                config.id,
                len(outcomes),
                len(refs),
            )
            for ref in dict.fromkeys(refs):
                await ref.settle(False)
            return
        counts = {name: 0 for name in COUNTER_OF.values()}
        needs_events = any(o.kind != OutcomeKind.DELIVERED for o in outcomes)
        events = split_pack(body) if needs_events else []
        # One message per pack and kind; dead letters also per error, so each keeps its own.
        handoffs: dict[tuple[int, str, str], HandOff] = {}
        now = datetime.now(UTC)
        logs = last_logs(result)
        requests = sample_requests(result.requests) if needs_events else []
        for i, outcome in enumerate(outcomes):
            counts[COUNTER_OF[outcome.kind]] += 1
            if outcome.kind == OutcomeKind.DELIVERED:
                continue
            event = events[i] if i < len(events) else b"{}"
            ref = refs[i]
            kind = disposition(outcome.kind, ref.attempt)
            if kind != "record":
                detail = "" if kind == "retry" else repr(outcome)
                handoff = handoffs.setdefault((id(ref), kind, detail), HandOff(kind, ref, outcome))
                handoff.events.append(event)
            self._recorder.sample(
                FailureSample(
                    instance_id=config.id,
                    time=now,
                    message_id=message_id_of(event),
                    version_id=config.version_id,
                    outcome=outcome.kind.value,
                    # As the worker cut them (again here: the size of a sample is its own).
                    error_type=cut_text(outcome.error_type or "", MAX_ERROR_NAME),
                    error_message=cut_text(outcome.message or "", MAX_ERROR_MESSAGE),
                    error_stack=cut_text(outcome.stack or "", MAX_ERROR_STACK),
                    event=event.decode(),
                    logs=logs,
                    requests=requests,
                    trace_id=ref.trace_id,
                    invocation_events=len(outcomes),
                )
            )
        self._recorder.count(
            config.id,
            config.workspace_id,
            config.function_id,
            {**counts, "invocations": 1},
            execution_ms=result.duration_ms,
        )
        stored = await self._store(config, list(handoffs.values()), result)
        per_ref: dict[int, tuple[PackRef, int]] = {}
        for ref in refs:
            seen = per_ref.get(id(ref))
            per_ref[id(ref)] = (ref, (seen[1] if seen else 0) + 1)
        for key, (ref, count) in per_ref.items():
            await ref.resolve(count, stored.get(key, True))

    async def _store(
        self, config: rpb.InstanceConfig, handoffs: list[HandOff], result: InvocationResult
    ) -> dict[int, bool]:
        """Hand the events off concurrently; return False for each pack whose hand-off failed."""
        if not handoffs:
            return {}

        async def one(handoff: HandOff) -> bool:
            try:
                await self._handoff(config, handoff, result)
            except (nats.errors.Error, OSError) as exc:  # the pack comes back, later
                if self._failed_logged.due(config.id):
                    log.warning(
                        "%s hand-off for instance %s failed: %r; its pack comes again later "
                        "(said once a minute per instance)",
                        handoff.kind,
                        config.id,
                        exc,
                    )
                return False
            return True

        done = await asyncio.gather(*(one(h) for h in handoffs))
        stored: dict[int, bool] = {}
        for handoff, ok in zip(handoffs, done, strict=True):
            key = id(handoff.ref)
            stored[key] = stored.get(key, True) and ok
        return stored
