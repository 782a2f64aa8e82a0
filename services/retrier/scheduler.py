"""Hold RETRY messages in JetStream until due, then send them back to EVENTS (or to DEAD).

A message not yet due is nak'ed with a delay (`nak_delay`), so pending retries live in
JetStream, cost no memory here and survive a restart. The decision uses the RETRY message's
stream timestamp as "now" and an RNG seeded by its dedupe id and attempt, so every
redelivery of one message computes the same due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common import streams
from services.common.config_watch import ConfigWatcher
from services.common.once_per import OncePer
from services.common.pull import NATS_ERRORS, pull_forever
from services.common.streams import DEAD_REASON, HISTORY
from services.common.telemetry import PROPAGATOR
from services.common.telemetry import extract as extract_trace
from services.common.tracer import get_tracer
from services.retrier.backoff import (
    DEFAULT_MAX_NAK_DELAY,
    Clock,
    GiveUp,
    RetryPolicy,
    decide,
    nak_delay,
    rng_for,
    utc_now,
)

log = logging.getLogger(__name__)
tracer = get_tracer("eventfn.retrier")

DURABLE = "retrier"
ORIGINAL_SUBJECT = "Eventfn-Original-Subject"
# Where a RETRY message whose subject names no instance is dead-lettered.
UNROUTABLE_DEAD_SUBJECT = "dead._invalid._invalid"
# Headers JetStream or NATS set on delivery; never copied into a new publish.
_TRANSPORT_HEADERS = frozenset({"Nats-Msg-Id", "Status", "Description"})
# Dead letters refused (their instance's DEAD subject full) are logged once per instance in
# this many seconds.
FULL_LOG_SECONDS = 60.0


class MalformedRetry(ValueError):
    """A RETRY message that can never be retried; the text says what is wrong with it."""


@dataclass(frozen=True, slots=True)
class RetryMessage:
    """The parts of a well-formed RETRY message the schedule needs."""

    workspace_id: str
    instance_id: str
    attempt: int
    first_attempt_at: datetime
    msg_id: str
    headers: dict[str, str]


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 time with an offset (nanoseconds are truncated)."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python takes at most 6 fractional digits; NATS and Go write up to 9.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"time {value!r} has no UTC offset")
    return parsed


def parse_retry(subject: str, headers: dict[str, str], body: bytes, seq: int) -> RetryMessage:
    """Check a RETRY message and extract what the schedule needs; raise MalformedRetry."""
    try:
        where = streams.parse_subject(subject)
    except ValueError as error:
        raise MalformedRetry(f"subject {subject!r} is not retry.<workspace>.<instance>") from error
    if where.kind != "retry":
        raise MalformedRetry(f"subject {subject!r} is not a retry subject")
    raw_attempt = headers.get(streams.ATTEMPT)
    if raw_attempt is None:
        raise MalformedRetry(f"header {streams.ATTEMPT} is missing")
    try:
        attempt = int(raw_attempt)
    except ValueError:
        attempt = 0
    if attempt < 1:
        raise MalformedRetry(f"header {streams.ATTEMPT} is {raw_attempt!r}, not an integer >= 1")
    raw_first = headers.get(streams.FIRST_ATTEMPT_AT)
    if not raw_first:
        raise MalformedRetry(f"header {streams.FIRST_ATTEMPT_AT} is missing")
    try:
        first = parse_time(raw_first)
    except ValueError:
        raise MalformedRetry(
            f"header {streams.FIRST_ATTEMPT_AT} is {raw_first!r}, not an ISO 8601 time with offset"
        ) from None
    raw_history = headers.get(HISTORY)
    if raw_history:
        try:
            history = orjson.loads(raw_history)
        except orjson.JSONDecodeError:
            history = None
        if not isinstance(history, list):
            raise MalformedRetry(f"header {HISTORY} is not a JSON list")
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedRetry("body is not JSON (expected a JSON array of events)") from None
    if not isinstance(events, list) or not events:
        raise MalformedRetry("body is not a non-empty JSON array of events")
    if not all(isinstance(e, dict) for e in events):
        raise MalformedRetry("body holds an element that is not a JSON object (an event)")
    return RetryMessage(
        workspace_id=where.workspace_id,
        instance_id=where.instance_id,
        attempt=attempt,
        first_attempt_at=first,
        msg_id=headers.get(streams.MSG_ID) or f"retry-seq{seq}",
        headers=headers,
    )


def carried_headers(headers: dict[str, str]) -> dict[str, str]:
    """Return the headers to copy into a republished message (trace context, history, the
    version a replay pinned...)."""
    return {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}


@dataclass(frozen=True, slots=True)
class Hold:
    """Not due yet: nak with this delay (seconds)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Republish:
    """Due: publish these headers and the body to EVENTS on `subject`."""

    subject: str
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Bury:
    """Dead-letter: publish to DEAD on `subject` with these headers (the reason included)."""

    subject: str
    headers: dict[str, str]


Plan = Hold | Republish | Bury


def plan(
    policy: RetryPolicy,
    message: RetryMessage,
    *,
    stored_at: datetime,
    now: datetime,
    max_hold: timedelta = DEFAULT_MAX_NAK_DELAY,
) -> Plan:
    """Decide what to do with a well-formed RETRY message stored at `stored_at`, at `now`."""
    decision = decide(
        policy,
        attempts=message.attempt,
        first_attempt_at=message.first_attempt_at,
        now=stored_at,
        rng=rng_for(f"{message.msg_id}:{message.attempt}"),
    )
    if isinstance(decision, GiveUp):
        headers = carried_headers(message.headers)
        headers[streams.MSG_ID] = f"{message.msg_id}:dead"
        # What to fix first (a list shows a reason's start), then why retrying stopped.
        last = message.headers.get(streams.LAST_ERROR, "")
        headers[DEAD_REASON] = (
            f"gave up after {message.attempt} attempts, last: {last}; {decision.reason}"
            if last
            else decision.reason
        )
        return Bury(streams.dead_subject(message.workspace_id, message.instance_id), headers)
    wait = nak_delay(decision.due, now, max_delay=max_hold)
    if wait > 0:
        return Hold(wait)
    headers = carried_headers(message.headers)
    headers[streams.ATTEMPT] = str(decision.attempt)
    headers[streams.FIRST_ATTEMPT_AT] = decision.first_attempt_at.astimezone(UTC).isoformat()
    headers[streams.MSG_ID] = f"{message.msg_id}:r{decision.attempt}"
    return Republish(streams.events_subject(message.workspace_id, message.instance_id), headers)


def malformed_dead_letter(
    subject: str, headers: dict[str, str], seq: int, reason: str, body: bytes = b""
) -> tuple[str, dict[str, str]]:
    """Return the DEAD subject and headers for a RETRY message that cannot be retried."""
    try:
        where = streams.parse_subject(subject)
        dead = streams.dead_subject(where.workspace_id, where.instance_id)
    except ValueError:
        dead = UNROUTABLE_DEAD_SUBJECT
    out = carried_headers(headers)
    out[streams.MSG_ID] = f"malformed-retry:{seq}"
    out[DEAD_REASON] = f"malformed RETRY message: {reason}"
    out[ORIGINAL_SUBJECT] = subject
    out[streams.COUNT] = str(event_count(body))
    return dead, out


def event_count(body: bytes) -> int:
    """Count the dead letters a body makes: an array's elements, else the body as one."""
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    return len(events) if isinstance(events, list) else 1


def string_headers(msg: Msg) -> dict[str, str]:
    """Return the message's headers as a plain str -> str dict."""
    return {str(k): str(v) for k, v in (msg.headers or {}).items()}


def instance_policy(base: RetryPolicy, config: rpb.InstanceConfig | None) -> RetryPolicy:
    """Apply an instance's retry overrides (window, longest wait; unset keeps the default)."""
    if config is None:
        return base
    cap = config.retry_max_delay.ToTimedelta() if config.HasField("retry_max_delay") else None
    window = config.retry_window.ToTimedelta() if config.HasField("retry_window") else None
    if not cap and not window:
        return base
    return dataclasses.replace(
        base, cap=max(cap or base.cap, base.base), window=window or base.window
    )


class RetryScheduler:
    """The durable RETRY consumer: hold, republish, dead-letter or discard each message."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        watcher: ConfigWatcher,
        policy: RetryPolicy,
        *,
        max_hold: timedelta = DEFAULT_MAX_NAK_DELAY,
        unknown_instance_grace: timedelta = timedelta(seconds=30),
        fetch: int = 256,
        ack_wait: float = 30.0,
        clock: Clock = utc_now,
    ) -> None:
        self._nc = nc
        self._js = js
        self._watcher = watcher
        self._policy = policy
        self._max_hold = max_hold
        self._grace = unknown_instance_grace
        self._fetch = fetch
        self._ack_wait = ack_wait
        self._clock = clock
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counts: Counter[str] = Counter()
        self.changed = asyncio.Condition()
        self._full_logged = OncePer(FULL_LOG_SECONDS)
        self.dead_discarded = 0  # events discarded: their instance's dead letters were full

    def start(self) -> None:
        """Start consuming RETRY (after the first configuration snapshot)."""
        self._task = asyncio.create_task(self._run(), name="retry-scheduler")

    async def stop(self) -> None:
        """Stop consuming; unacked messages come back to the next retrier."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_for(self, predicate: Any, seconds: float = 30) -> None:
        """Wait until `predicate(counts)` holds (for tests and tools)."""
        async with asyncio.timeout(seconds), self.changed:
            await self.changed.wait_for(lambda: predicate(self.counts))

    async def _count(self, what: str) -> None:
        async with self.changed:
            self.counts[what] += 1
            self.changed.notify_all()

    async def _run(self) -> None:
        await self._watcher.ready.wait()
        await pull_forever(
            self._nc,
            self._js,
            subjects=streams.subject_filter("retry"),
            stream=streams.RETRY_STREAM,
            durable=DURABLE,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_deliver=-1,
                # Held (nak'ed) messages stay pending: no limit, or held retries would
                # block new ones.
                max_ack_pending=-1,
            ),
            room=self._room_for,
            handle=self._take,
            stopping=self._stopping,
        )

    async def _room_for(self) -> int:
        return self._fetch

    async def _take(self, msgs: list[Msg]) -> None:
        await asyncio.gather(*(self._guarded(m) for m in msgs))

    async def _guarded(self, msg: Msg) -> None:
        try:
            await self.handle(msg)
        except Exception:
            # Never a crash loop: hand it back with a pause and try again later.
            log.exception("RETRY message %s could not be handled; retrying in 5 s", msg.subject)
            await self._count("errors")
            with contextlib.suppress(*NATS_ERRORS):
                await msg.nak(delay=5.0)

    def policy_for(self, instance_id: str) -> RetryPolicy:
        """Return the retry policy of an instance (the deployment's, with its overrides)."""
        return instance_policy(self._policy, self._watcher.instances.get(instance_id))

    async def _settled(self, msg: Msg, seq: int) -> None:
        """Remove a handled message from RETRY, then ack it.

        RETRY keeps messages by age, so without the delete a per-instance message count would
        include retries already done; deleted first, a crash before the ack cannot bring the
        message back either (it was already republished, dead-lettered or discarded).
        """
        with contextlib.suppress(*NATS_ERRORS):
            await self._js.delete_msg(streams.RETRY_STREAM, seq)
        await msg.ack()

    async def handle(self, msg: Msg) -> None:
        """Settle one RETRY message: hold it, republish it, dead-letter it or discard it."""
        meta = msg.metadata
        seq = meta.sequence.stream if meta.sequence else 0
        headers = string_headers(msg)
        # The retry continues the event's trace: its parent is the invocation that failed.
        parent = extract_trace(headers) if streams.TRACEPARENT in headers else None
        with tracer.start_as_current_span("retry.schedule", context=parent) as span:
            span.set_attribute("messaging.destination", msg.subject)
            try:
                message = parse_retry(msg.subject, headers, msg.data, seq)
            except MalformedRetry as error:
                span.set_attribute("eventfn.retry.outcome", "malformed")
                await self._bury_malformed(msg, headers, seq, str(error))
                return
            span.set_attribute("eventfn.instance_id", message.instance_id)
            span.set_attribute("eventfn.attempt", message.attempt)
            now = self._clock()
            stored_at = meta.timestamp if meta.timestamp else now
            if message.instance_id not in self._watcher.instances:
                if self._watcher.connected and now - stored_at > self._grace:
                    span.set_attribute("eventfn.retry.outcome", "discarded")
                    log.warning(
                        "retry of %s (attempt %d) discarded: instance deleted",
                        message.instance_id,
                        message.attempt + 1,
                    )
                    await self._count("discarded")
                    await self._settled(msg, seq)
                    return
                # Not known yet (config lag) or the registry is unreachable: look again soon.
                await msg.nak(delay=1.0)
                return
            decision = plan(
                self.policy_for(message.instance_id),
                message,
                stored_at=stored_at,
                now=now,
                max_hold=self._max_hold,
            )
            if isinstance(decision, Hold):
                span.set_attribute("eventfn.retry.outcome", "held")
                await msg.nak(delay=decision.seconds)
                await self._count("held")
                return
            if isinstance(decision, Republish):
                span.set_attribute("eventfn.retry.outcome", "republished")
                PROPAGATOR.inject(decision.headers)  # the next attempt is this span's child
                await self._js.publish(decision.subject, msg.data, headers=decision.headers)
                await self._settled(msg, seq)
                await self._count("republished")
                return
            span.set_attribute("eventfn.retry.outcome", "dead")
            log.info(
                "events of %s dead-lettered: %s", message.instance_id, decision.headers[DEAD_REASON]
            )
            with tracer.start_as_current_span("dead_letter") as dead:
                dead.set_attribute("eventfn.dead.reason", decision.headers[DEAD_REASON][:200])
                PROPAGATOR.inject(decision.headers)
                buried = await self._dead_letter(decision.subject, msg.data, decision.headers)
            if not buried:
                span.set_attribute("eventfn.retry.outcome", "discarded")
            await self._settled(msg, seq)
            await self._count("dead" if buried else "discarded")

    async def _bury_malformed(
        self, msg: Msg, headers: dict[str, str], seq: int, reason: str
    ) -> None:
        subject, out = malformed_dead_letter(msg.subject, headers, seq, reason, msg.data)
        log.warning("RETRY message %d on %s dead-lettered: %s", seq, msg.subject, reason)
        buried = await self._dead_letter(subject, msg.data, out)
        await self._settled(msg, seq)
        await self._count("malformed" if buried else "discarded")

    async def _dead_letter(self, subject: str, body: bytes, headers: dict[str, str]) -> bool:
        """Publish to DEAD; return False when the subject's instance already holds as many
        packs of dead letters as it may: its events are then discarded, with the reason."""
        try:
            await self._js.publish(subject, body, headers=headers)
            return True
        except APIError as error:
            if not streams.subject_full(error):
                raise
        self.dead_discarded += event_count(body)
        if self._full_logged.due(subject):
            log.warning(
                "%s holds as many packs of dead letters as it may "
                "(EVENTFN_DEAD_MAX_PER_INSTANCE): events past their retries discarded, %d "
                "of this message (%s), and so are its next ones until some of its dead letters "
                "are replayed, purged or expire (said once a minute per instance)",
                subject,
                event_count(body),
                headers.get(DEAD_REASON, ""),
            )
        return False
