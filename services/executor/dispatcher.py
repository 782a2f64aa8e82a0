"""From packs to invocations to outcomes: per-instance lanes with batching and concurrency.

A pack (one JetStream message: a JSON array of events for one instance) is acked once each
of its events reached an outcome: delivered, discarded or failed (recorded), or retryable
and durably handed to RETRY. Without onBatch (or at low volume) a pack goes to V8 as it
arrived — bytes, not parsed in Python — and a JS-side loop runs each event's handler.
With onBatch and enough volume, events of several packs are collected up to the instance's
batch size or wait, then one onBatch call gets the array.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.context import Context

from eventfn.registry.v1 import registry_pb2 as rpb
from services.common.delivery_records import DeliveryRecorder, FailureSample
from services.executor.policy import RateMeter, use_batch
from services.runtime import Invocation, InvocationResult, OutcomeKind, RuntimePool

log = logging.getLogger(__name__)
tracer = trace.get_tracer("eventfn.executor")

MAX_LOG_CHARS = 4096
COUNTER_OF = {
    OutcomeKind.DELIVERED: "delivered",
    OutcomeKind.RETRY: "retried",
    OutcomeKind.DISCARD: "discarded",
    OutcomeKind.FAILURE: "failed",
}


@dataclass(eq=False)  # compared and hashed by identity: one per received pack
class PackRef:
    """A received pack: what to ack, and how many of its events still await an outcome."""

    settle: Callable[[bool], Awaitable[None]]  # True: ack, False: hand back (nak)
    remaining: int
    count: int = 0  # events in the pack (its Eventfn-Count header)
    attempt: int = 1
    first_attempt_at: str = ""
    history: str = ""  # JSON list of earlier attempts, carried from RETRY through EVENTS
    trace: Context | None = None  # the event's trace, from the pack's W3C headers
    ok: bool = True

    async def resolve(self, count: int, ok: bool = True) -> None:
        """Mark `count` events as settled; ack (or nak) once all are."""
        self.ok = self.ok and ok
        self.remaining -= count
        if self.remaining == 0:
            await self.settle(self.ok)


@dataclass
class Pending:
    """Events waiting for an onBatch call."""

    events: list[bytes] = field(default_factory=list)
    refs: list[PackRef] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


# (kind "retry" | "dead", instance, events, their pack, last error, the invocation's result):
# store them durably.
Handoff = Callable[
    [str, rpb.InstanceConfig, list[bytes], PackRef, str, InvocationResult], Awaitable[None]
]


def last_logs(result: InvocationResult) -> str:
    """Return an invocation's console output (already redacted), capped from the end."""
    text = "\n".join(f"{line.level}: {line.message}" for line in result.logs)
    return text[-MAX_LOG_CHARS:]


def secrets_of(config: rpb.InstanceConfig) -> tuple[str, ...]:
    """Return the encrypted settings' values, to redact from logs and traces."""
    out: list[str] = []
    for name in config.secret_setting_names:
        value = config.settings.fields.get(name)
        if value is None:
            continue
        kind = value.WhichOneof("kind")
        if kind == "string_value" and value.string_value:
            out.append(value.string_value)
        elif kind == "list_value":
            out += [v.string_value for v in value.list_value.values if v.string_value]
        elif kind == "struct_value":
            out += [v.string_value for v in value.struct_value.fields.values() if v.string_value]
    return tuple(out)


def settings_of(config: rpb.InstanceConfig) -> dict[str, Any]:
    """Return the instance's settings as plain JSON values."""
    return json_format.MessageToDict(config.settings)


def split_pack(body: bytes) -> list[bytes]:
    """Split a pack's JSON array into the encoded events."""
    events = orjson.loads(body)
    if not isinstance(events, list):
        events = [events]
    return [orjson.dumps(e) for e in events]


class Dispatcher:
    """Run the packs of every instance, within per-instance concurrency."""

    def __init__(
        self,
        pool: RuntimePool,
        recorder: DeliveryRecorder,
        handoff: Handoff,
        *,
        instance_concurrency: int,
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._handoff = handoff
        self._concurrency = instance_concurrency
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._rates: dict[str, RateMeter] = {}
        self._pending: dict[str, Pending] = {}
        self._configs: dict[str, rpb.InstanceConfig] = {}
        self._settings_cache: dict[
            str, tuple[tuple[str, int, str], dict[str, Any], tuple[str, ...]]
        ] = {}
        # The context keys each instance has in the pool, and its latest config revision.
        self._context_keys: dict[str, tuple[int, set[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def busy(self) -> int:
        """Return the invocations in flight or waiting to run."""
        return len(self._tasks) + sum(len(p.events) for p in self._pending.values())

    def _spawn(
        self,
        config: rpb.InstanceConfig,
        body: bytes,
        refs: list[PackRef],
        *,
        batch: bool,
        count_rate: bool,
    ) -> None:
        """Run an invocation in the background; a bug in it hands its packs back."""

        async def run() -> None:
            try:
                await self._invoke(config, body, refs, batch=batch, count_rate=count_rate)
            except Exception:
                log.exception("packs of instance %s failed in the executor; handed back", config.id)
                for ref in dict.fromkeys(refs):
                    await ref.settle(False)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settings(self, config: rpb.InstanceConfig) -> tuple[dict[str, Any], tuple[str, ...]]:
        """Return an instance's settings and secrets, converted once per config revision."""
        key = (config.id, config.revision, config.version_id)
        found = self._settings_cache.get(config.id)
        if found is None or found[0] != key:
            found = self._settings_cache[config.id] = (
                key,
                settings_of(config),
                secrets_of(config),
            )
        return found[1], found[2]

    async def context_key(self, config: rpb.InstanceConfig) -> str:
        """Return the instance's V8 context key; drop its contexts of older revisions.

        One context per instance, version and config revision: globals never carry one
        instance's settings into another's invocation, nor old settings into new ones.
        """
        key = f"{config.id}:{config.version_id}:{config.revision}"
        revision, keys = self._context_keys.get(config.id, (config.revision, set()))
        if config.revision > revision:
            for old in keys:
                await self._pool.evict(old)
            revision, keys = config.revision, set()
        keys.add(key)
        self._context_keys[config.id] = (revision, keys)
        return key

    async def submit(self, config: rpb.InstanceConfig, body: bytes, ref: PackRef) -> None:
        """Take a pack for an instance; returns once it is queued (not run)."""
        self._configs[config.id] = config
        function_key = await self.context_key(config)
        handlers = await self._pool.handlers(function_key, config.code)
        rate = self._rates.setdefault(config.id, RateMeter())
        if "onBatch" not in handlers:
            # Events are counted once we know how many there are (from the outcomes).
            self._spawn(config, body, [ref], batch=False, count_rate=True)
            return
        events = split_pack(body)
        if not use_batch(True, rate.add(len(events), time.monotonic())):
            self._spawn(config, body, [ref], batch=False, count_rate=False)
            return
        ref.remaining = len(events)
        pending = self._pending.setdefault(config.id, Pending())
        for event in events:
            pending.events.append(event)
            pending.refs.append(ref)
            if len(pending.events) >= config.batch_size:
                self._flush(config.id)
                pending = self._pending.setdefault(config.id, Pending())
        if pending.events and pending.timer is None:
            pending.timer = asyncio.get_running_loop().call_later(
                config.batch_wait_ms / 1000, self._flush, config.id
            )

    def _flush(self, instance_id: str) -> None:
        pending = self._pending.pop(instance_id, None)
        if pending is None or not pending.events:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        config = self._configs[instance_id]
        body = b"[" + b",".join(pending.events) + b"]"
        self._spawn(config, body, pending.refs, batch=True, count_rate=False)

    async def _invoke(
        self,
        config: rpb.InstanceConfig,
        body: bytes,
        refs: list[PackRef],
        *,
        batch: bool,
        count_rate: bool,
    ) -> None:
        """Invoke the function on events; act on each outcome; settle the packs."""
        settings, secrets = self._settings(config)
        limit = self._limits.setdefault(config.id, asyncio.Semaphore(self._concurrency))
        async with limit:
            traces = [r.trace for r in dict.fromkeys(refs) if r.trace is not None]
            with tracer.start_as_current_span(
                "invoke",
                context=traces[0] if traces else None,
                # A batch mixes packs: it belongs to the first one's trace, linked to the others.
                links=[
                    trace.Link(trace.get_current_span(t).get_span_context()) for t in traces[1:]
                ],
                attributes={
                    "eventfn.instance_id": config.id,
                    "eventfn.function_id": config.function_id,
                    "eventfn.version_id": config.version_id,
                    "eventfn.batch": batch,
                },
            ) as span:
                try:
                    result = await self._pool.run(
                        Invocation(
                            function_key=await self.context_key(config),
                            code=config.code,
                            events=body,
                            settings=settings,
                            batch=batch,
                            timeout_s=config.timeout_ms / 1000,
                            secrets=secrets,
                            count=len(refs) if batch else (refs[0].count or None),
                        )
                    )
                except Exception:
                    log.exception("invocation of instance %s failed in the runtime", config.id)
                    for ref in dict.fromkeys(refs):
                        await ref.settle(False)
                    return
                span.set_attribute("eventfn.events", len(result.outcomes))
        if not batch:  # the whole pack ran at once: every outcome belongs to its one ref
            refs = refs * len(result.outcomes)
            refs_owner = refs[0] if refs else None
            if refs_owner is None:
                return  # an empty pack; the consumer acks those before they get here
            refs_owner.remaining = len(result.outcomes)
        if count_rate:
            self._rates[config.id].add(len(result.outcomes), time.monotonic())
        await self._act(config, body, refs, result)

    async def _act(
        self,
        config: rpb.InstanceConfig,
        body: bytes,
        refs: list[PackRef],
        result: InvocationResult,
    ) -> None:
        outcomes = result.outcomes
        counts = {name: 0 for name in COUNTER_OF.values()}
        needs_events = any(o.kind != OutcomeKind.DELIVERED for o in outcomes)
        events = split_pack(body) if needs_events else []
        # Retryable events go to RETRY; on a retry, a permanent outcome ends in DEAD.
        handoffs: dict[tuple[int, str], tuple[PackRef, list[bytes], str]] = {}
        now = datetime.now(UTC)
        logs = last_logs(result)
        for i, outcome in enumerate(outcomes):
            counts[COUNTER_OF[outcome.kind]] += 1
            if outcome.kind == OutcomeKind.DELIVERED:
                continue
            event = events[i] if i < len(events) else b"{}"
            ref = refs[i]
            kind = "retry" if outcome.kind == OutcomeKind.RETRY else "dead"
            if kind == "retry" or ref.attempt > 1:
                error = f"{outcome.error_type}: {outcome.message}"
                entry = handoffs.setdefault((id(ref), kind), (ref, [], error))
                entry[1].append(event)
            self._recorder.sample(
                FailureSample(
                    instance_id=config.id,
                    time=now,
                    message_id=str(orjson.loads(event).get("messageId", "")) if event else "",
                    version_id=config.version_id,
                    outcome=outcome.kind.value,
                    error_type=outcome.error_type or "",
                    error_message=outcome.message or "",
                    error_stack=outcome.stack or "",
                    event=event.decode(),
                    logs=logs,
                    requests=[t.__dict__ for t in result.requests],
                )
            )
        self._recorder.count(
            config.id,
            config.workspace_id,
            config.function_id,
            {**counts, "invocations": 1},
            execution_ms=result.duration_ms,
        )
        stored: dict[int, bool] = {}
        for (key, kind), (ref, handed, error) in handoffs.items():
            try:
                await self._handoff(kind, config, handed, ref, error, result)
            except Exception as exc:  # NATS down: hand the pack back, it will be redelivered
                log.warning("%s hand-off for %s failed: %r; pack handed back", kind, config.id, exc)
                stored[key] = False
        per_ref: dict[int, tuple[PackRef, int]] = {}
        for ref in refs:
            seen = per_ref.get(id(ref))
            per_ref[id(ref)] = (ref, (seen[1] if seen else 0) + 1)
        for key, (ref, count) in per_ref.items():
            await ref.resolve(count, stored.get(key, True))

    async def drain(self, grace: float) -> bool:
        """Flush pending batches and wait for in-flight invocations; False past the grace."""
        for instance_id in list(self._pending):
            self._flush(instance_id)
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        return not pending
