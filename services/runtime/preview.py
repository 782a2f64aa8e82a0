"""Preview: run saved or unsaved code on one event or a JSON array, in a fresh context."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .config import RuntimeConfig
from .errors import InvalidInvocation
from .model import PREVIEW_OWNER, EventOutcome, Invocation, LogLine, OutcomeKind, RequestTrace
from .outcomes import invalid_settings_outcome
from .pool import RuntimePool
from .settings_schema import check_settings

PREVIEW_LOG_CAP = 4 * 1024
SAMPLES_DIR = Path(__file__).with_name("samples")
SAMPLE_TYPES = ("track", "identify", "page", "screen", "group", "alias", "delete")


@dataclass(frozen=True)
class PreviewError:
    """The error a previewed run ended with."""

    type: str
    message: str
    stack: str | None


@dataclass(frozen=True)
class PreviewResult:
    """What a previewed run did: outcome, value, error, console output and requests."""

    outcome: OutcomeKind
    outcomes: list[EventOutcome]
    result: object
    error: PreviewError | None
    logs: list[LogLine] = field(default_factory=list)
    logs_truncated: bool = False
    requests: list[RequestTrace] = field(default_factory=list)
    duration_ms: float = 0.0


def sample_event(event_type: str) -> bytes:
    """Return the shipped sample event of a type (track, identify, page, ...)."""
    if event_type not in SAMPLE_TYPES:
        raise ValueError(f"no sample for {event_type!r}; samples: {', '.join(SAMPLE_TYPES)}")
    return (SAMPLES_DIR / f"{event_type}.json").read_bytes()


def _first_problem(outcomes: Sequence[EventOutcome]) -> EventOutcome | None:
    return next((o for o in outcomes if o.kind != OutcomeKind.DELIVERED), None)


async def run_preview(
    pool: RuntimePool,
    code: str,
    payload: bytes,
    settings: Mapping[str, object],
    *,
    secrets: Sequence[str] = (),
    schema: Sequence[Mapping[str, object]] | None = None,
    timeout_s: float = 5.0,
    workspace: str = "",
) -> PreviewResult:
    """Run `code` on `payload` (an event object, or an array for onBatch) in a fresh context.

    `workspace` is whose preview it is (the executor's callers'): its owner (`owner_of`) is
    the workspace's, so that one whose previews are quarantined takes no other's with it,
    and its fetches share the workspace's share of the connections.
    """
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidInvocation(f"the test event is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict | list):
        raise InvalidInvocation("the test input must be an event object or an array of events")
    batch = isinstance(parsed, list)
    events = payload if batch else b"[" + payload + b"]"
    if schema is not None:
        problems = check_settings(schema, settings)
        if problems:
            outcome = invalid_settings_outcome("; ".join(problems))
            count = len(parsed) if isinstance(parsed, list) else 1
            return PreviewResult(
                outcome=outcome.kind,
                outcomes=[outcome] * count,
                result=None,
                error=PreviewError("InvalidSettings", outcome.message or "", None),
            )
    owner = f"{PREVIEW_OWNER}-{workspace}" if workspace else PREVIEW_OWNER
    key = f"{owner}:{uuid.uuid4().hex}"
    invocation = Invocation(
        function_key=key,
        code=code,
        events=events,
        settings=dict(settings),
        batch=batch,
        timeout_s=timeout_s,
        secrets=tuple(secrets),
        trace_bodies=True,
        log_cap_bytes=PREVIEW_LOG_CAP,
        tenant=workspace,
    )
    try:
        ran = await pool.run(invocation, fresh=True)
    finally:
        pool.evict(key)
    problem = _first_problem(ran.outcomes)
    values = ran.values or []
    return PreviewResult(
        outcome=problem.kind if problem else OutcomeKind.DELIVERED,
        outcomes=ran.outcomes,
        result=values[0] if len(values) == 1 else values or None,
        error=None
        if problem is None
        else PreviewError(problem.error_type or "Error", problem.message or "", problem.stack),
        logs=ran.logs,
        logs_truncated=ran.logs_truncated,
        requests=ran.requests,
        duration_ms=ran.duration_ms,
    )


async def preview_in_process(
    code: str,
    payload: bytes,
    settings: Mapping[str, object],
    *,
    config: RuntimeConfig | None = None,
    secrets: Sequence[str] = (),
    timeout_s: float = 5.0,
) -> PreviewResult:
    """Start a one-worker pool, preview, and stop it (for the CLI: no platform needed)."""
    async with RuntimePool(config or RuntimeConfig(workers=1)) as pool:
        return await run_preview(
            pool, code, payload, settings, secrets=secrets, timeout_s=timeout_s
        )
