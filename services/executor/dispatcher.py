"""From packs to invocations: per-instance lanes with batching and concurrency.

A pack (one JetStream message: a JSON array of events for one instance) is acked once each
of its events reached an outcome: delivered, discarded, dead-lettered, or retryable and
durably handed to RETRY (see `settlement`). Without onBatch a pack goes to V8 as it arrived
— bytes, not parsed in Python — and a JS-side loop runs each event's handler. With onBatch
and enough volume, events of several packs are collected up to the instance's batch size or
wait, then one onBatch call gets the array. Below that volume an event goes to its
single-event handler when the function has one for its type, else to onBatch at once (with
whatever else is waiting): onBatch-only functions never lose events to EventNotSupported.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry import trace

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common.config_watch import ConfigView
from services.common.deliveries.recorder import DeliveryRecorder
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE, message_ids
from services.common.tracer import get_tracer
from services.executor.observe import (
    ExecutorMetrics,
    annotate,
    outgoing_trace,
    record_fetches,
)
from services.executor.pack_ref import PackRef, join_events, split_pack, split_typed
from services.executor.policy import ON_BATCH, RateMeter, to_on_batch, use_batch
from services.executor.settlement import Handoff, Settlement
from services.runtime import (
    EventOutcome,
    Invocation,
    InvocationResult,
    OutcomeKind,
    RuntimePool,
)

log = logging.getLogger(__name__)
tracer = get_tracer("eventfn.executor")


@dataclass
class Pending:
    """Events waiting for an onBatch call of one configuration (instance, version, revision):
    a replay pinned to another version, or a change, never joins another's batch."""

    config: rpb.InstanceConfig
    code: str
    events: list[bytes] = field(default_factory=list)
    refs: list[PackRef] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


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


def runs(view: ConfigView, instance_id: str) -> bool:
    """Tell whether a configuration runs an instance: it has it, and enabled."""
    config = view.instances.get(instance_id)
    return config is not None and config.enabled


def observed(record: Callable[..., object], *args: object) -> None:
    """Record what an invocation did (its spans, its metrics); a fault in that is logged and
    never keeps its events from being settled (handed back, the function ran again for ever)."""
    try:
        record(*args)
    except Exception:
        log.exception(
            "recording an invocation failed (%s); its events are settled all the same",
            getattr(record, "__qualname__", record),
        )


# Times the executor may fail on a pack (its invocation's work raising) before its events are
# dead-lettered rather than handed back again; handed back after 1, 2, 4 and 8 s.
MAX_FAULTS = 5
# Packs whose faults are remembered (by stream sequence), the most recent.
FAULTS_KEPT = 10_000


class Faults:
    """How many times this executor failed on each pack lately, by its EVENTS sequence."""

    def __init__(self, kept: int = FAULTS_KEPT) -> None:
        self._kept = kept
        self._counts: OrderedDict[int, int] = OrderedDict()

    def add(self, seq: int) -> int:
        """Count a fault on the pack at `seq`; return its faults so far (1 for an unknown
        sequence: never counted together)."""
        if not seq:
            return 1
        count = self._counts.pop(seq, 0) + 1
        self._counts[seq] = count
        if len(self._counts) > self._kept:
            self._counts.popitem(last=False)
        return count


class Dispatcher:
    """Run the packs of every instance, within per-instance concurrency."""

    def __init__(
        self,
        pool: RuntimePool,
        recorder: DeliveryRecorder,
        handoff: Handoff,
        *,
        instance_concurrency: int,
        metrics: ExecutorMetrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics
        self._settlement = Settlement(recorder, handoff)
        self._concurrency = instance_concurrency
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._rates: dict[str, RateMeter] = {}
        self._pending: dict[str, Pending] = {}
        self._settings_cache: dict[
            str, tuple[tuple[str, int, str], dict[str, Any], tuple[str, ...]]
        ] = {}
        # The context keys each instance has in the pool, and its latest config revision.
        self._context_keys: dict[str, tuple[int, set[str]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._faults = Faults()
        # Per context key: the loading of its code that packs wait on (see `submit`).
        self._loading: dict[str, asyncio.Future[frozenset[str]]] = {}
        # The configuration last followed (None: none, every instance runs) and the tasks
        # of each instance in flight: an instance it no longer runs is forgotten once idle.
        self._view: ConfigView | None = None
        self._working: dict[str, int] = {}

    @property
    def busy(self) -> int:
        """Return the invocations in flight or waiting to run."""
        return len(self._tasks) + sum(len(p.events) for p in self._pending.values())

    def _spawn(
        self,
        config: rpb.InstanceConfig,
        code: str,
        body: bytes,
        refs: list[PackRef],
        *,
        batch: bool,
    ) -> None:
        """Run an invocation in the background; a fault in it hands its packs back."""

        async def run() -> None:
            try:
                await self._invoke(config, code, body, refs, batch=batch)
            except Exception as error:
                await self._faulted(config, body, refs, error)

        self._track(config.id, run())

    async def _faulted(
        self, config: rpb.InstanceConfig, body: bytes, refs: list[PackRef], error: Exception
    ) -> None:
        """Hand the packs of an invocation the executor (or the runtime) failed on back for
        another try, after a pause; the events of those it failed on MAX_FAULTS times are
        dead-lettered instead, replayable once fixed: a fault that stays ran the function
        again for ever (an unreadable fetch URL), each time sending what it sends."""
        correlation_id = uuid.uuid4().hex
        log.error(
            "packs of instance %s failed in the executor (%s, correlation id %s)",
            config.id,
            type(error).__name__,
            correlation_id,
            exc_info=error,
        )
        faults = {ref: self._faults.add(ref.seq) for ref in dict.fromkeys(refs)}
        worn = [i for i, ref in enumerate(refs) if faults[ref] >= MAX_FAULTS]
        if worn:  # only their own events: a pack batched with them is handed back
            failed = EventOutcome(
                OutcomeKind.FAILURE,
                error_type="ExecutorError",
                message=f"the executor failed on these events {MAX_FAULTS} times "
                f"({type(error).__name__}, logged under correlation id {correlation_id}); "
                "replay them once that is fixed",
            )
            events = split_pack(body) if len(worn) < len(refs) else []
            try:
                await self._settlement.act(
                    config,
                    join_events([events[i] for i in worn]) if events else body,
                    [refs[i] for i in worn],
                    InvocationResult([failed] * len(worn)),
                )
            except Exception:
                log.exception("packs of instance %s could not be dead-lettered", config.id)
            else:
                faults = {ref: n for ref, n in faults.items() if n < MAX_FAULTS}
        for ref in faults:
            await ref.settle(False)

    def _track(self, instance_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run an instance's work in the background, counted as in flight until it ends."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        self._working[instance_id] = self._working.get(instance_id, 0) + 1
        task.add_done_callback(lambda _: self._ended(instance_id, task))

    def _ended(self, instance_id: str, task: asyncio.Task[None]) -> None:
        """Count an instance's work out; after its last, forget it if no longer run."""
        self._tasks.discard(task)
        left = self._working.pop(instance_id) - 1
        if left:
            self._working[instance_id] = left
        elif self._view is not None and not runs(self._view, instance_id):
            self._forget_if_idle(instance_id)

    def follow(self, view: ConfigView) -> None:
        """Take the configuration's new view: forget the instances it no longer runs (deleted,
        disabled) now, or those with work in flight once it ends (see `_ended`).

        A deleted instance's settings (up to 256 KiB), rate, concurrency and V8 contexts were
        kept for the process's lifetime: a tenant creating and deleting instances grew every
        executor for good. A delta looks only at the instances of the sources it changed.
        """
        old, self._view = self._view, view
        touched: Iterable[str]
        if old is None or view.changed_sources is None:  # a snapshot: everything may have
            touched = list(self._context_keys)
        else:
            touched = [
                instance.id
                for v in (old, view)
                for source_id in view.changed_sources
                for instance in v.instances_by_source.get(source_id, ())
            ]
        for instance_id in touched:
            if instance_id in self._context_keys and not runs(view, instance_id):
                self._forget_if_idle(instance_id)

    def _forget_if_idle(self, instance_id: str) -> None:
        """Drop what is kept of an instance (settings, rate, concurrency, V8 contexts) unless
        it has work in flight or a batch waiting: that ends as it would have."""
        if self._busy(instance_id):
            return
        self._settings_cache.pop(instance_id, None)
        self._rates.pop(instance_id, None)
        self._limits.pop(instance_id, None)
        for key in self._context_keys.pop(instance_id, (0, set()))[1]:
            self._pool.evict(key)

    def _busy(self, instance_id: str) -> bool:
        """Tell whether an instance has work in flight or a batch waiting."""
        return instance_id in self._working or any(
            p.config.id == instance_id for p in self._pending.values()
        )

    def _code_of(self, config: rpb.InstanceConfig) -> str:
        """Return the code a configuration runs: the view holds a version's code once, and a
        pack's work carries it to its end (an instance moved to another version meanwhile,
        its code is let go with the last of that work)."""
        view = self._view
        return view.code_of(config) if view is not None else config.code

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

    def context_key(self, config: rpb.InstanceConfig) -> str:
        """Return the instance's V8 context key; drop its contexts of older revisions.

        One context per instance, version and config revision: globals never carry one
        instance's settings into another's invocation, nor old settings into new ones.
        """
        key = f"{config.id}:{config.version_id}:{config.revision}"
        revision, keys = self._context_keys.get(config.id, (config.revision, set()))
        if config.revision > revision:
            for old in keys:
                self._pool.evict(old)
            revision, keys = config.revision, set()
        keys.add(key)
        self._context_keys[config.id] = (revision, keys)
        return key

    async def submit(self, config: rpb.InstanceConfig, body: bytes, ref: PackRef) -> None:
        """Take a pack for an instance; returns once it is queued (not run).

        Which handlers the code defines is known once it was loaded on a worker: until then
        the pack waits for that in a task of its own, never holding the packs of other
        instances (a script busy for seconds at load, in a loop of new instances, held every
        tenant's deliveries on the executor).
        """
        function_key = self.context_key(config)
        code = self._code_of(config)
        handlers = self._pool.known_handlers(function_key)
        if handlers is None:
            self._track(config.id, self._queue_once_loaded(config, code, function_key, body, ref))
            return
        self._queue(config, code, function_key, handlers, body, ref)

    async def _queue_once_loaded(
        self, config: rpb.InstanceConfig, code: str, function_key: str, body: bytes, ref: PackRef
    ) -> None:
        """Load the code (once for every pack waiting on it), then queue the pack; a fault
        hands it back."""
        try:
            loading = self._loading.get(function_key)
            if loading is None:
                loading = asyncio.ensure_future(
                    self._pool.handlers(function_key, code, config.workspace_id)
                )
                self._loading[function_key] = loading
                loading.add_done_callback(lambda _: self._loading.pop(function_key, None))
            handlers = await asyncio.shield(loading)
            self._queue(config, code, function_key, handlers, body, ref)
        except Exception:
            log.exception("the code of instance %s could not be loaded; handed back", config.id)
            await ref.settle(False)

    def _queue(
        self,
        config: rpb.InstanceConfig,
        code: str,
        function_key: str,
        handlers: frozenset[str],
        body: bytes,
        ref: PackRef,
    ) -> None:
        """Run a pack's events as its handlers take them: one invocation, or onBatch batches."""
        rate = self._rates.setdefault(config.id, RateMeter())
        now = time.monotonic()
        if ON_BATCH not in handlers:
            rate.add(ref.count, now)
            ref.remaining = ref.count
            self._spawn(config, code, body, [ref] * ref.count, batch=False)
            return
        events = split_typed(body)
        batching = use_batch(True, rate.add(len(events), now))
        single: list[bytes] = []
        batched: list[bytes] = []
        for event, handler in events:
            on_batch = to_on_batch(handler, handlers, batching=batching)
            (batched if on_batch else single).append(event)
        # Set before any invocation of the pack starts: each resolves only its own events.
        ref.remaining = len(events)
        if single:
            whole = len(single) == len(events)
            part = body if whole else join_events(single)
            self._spawn(config, code, part, [ref] * len(single), batch=False)
        if batched:
            self._collect(config, code, function_key, batched, ref, at_once=not batching)

    def _collect(
        self,
        config: rpb.InstanceConfig,
        code: str,
        function_key: str,
        events: list[bytes],
        ref: PackRef,
        *,
        at_once: bool,
    ) -> None:
        """Add events of a pack to its configuration's onBatch batch; flush it when due.

        A batch is due when it reaches the batch size, when its wait is over, or at once
        below the batching volume: an event waits for company only when company comes.
        """
        pending = self._pending.setdefault(function_key, Pending(config, code))
        for event in events:
            pending.events.append(event)
            pending.refs.append(ref)
            if len(pending.events) >= config.batch_size:
                self._flush(function_key)
                pending = self._pending.setdefault(function_key, Pending(config, code))
        if not pending.events:
            return
        if at_once:
            self._flush(function_key)
        elif pending.timer is None:
            pending.timer = asyncio.get_running_loop().call_later(
                config.batch_wait.ToTimedelta().total_seconds(), self._flush, function_key
            )

    def _flush(self, function_key: str) -> None:
        pending = self._pending.pop(function_key, None)
        if pending is None or not pending.events:
            return
        if pending.timer is not None:
            pending.timer.cancel()
        events = join_events(pending.events)
        self._spawn(pending.config, pending.code, events, pending.refs, batch=True)

    async def _invoke(
        self,
        config: rpb.InstanceConfig,
        code: str,
        body: bytes,
        refs: list[PackRef],
        *,
        batch: bool,
    ) -> None:
        """Invoke the function on events (refs[i]: the pack of event i); act on the outcomes."""
        settings, secrets = self._settings(config)
        limit = self._limits.setdefault(config.id, asyncio.Semaphore(self._concurrency))
        async with limit:
            packs = dict.fromkeys(refs)
            traces = [r.trace for r in packs if r.trace is not None]
            traces += [link for r in packs for link in r.links]
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
                    MESSAGE_IDS_ATTRIBUTE: message_ids(
                        i for r in dict.fromkeys(refs) for i in r.message_ids
                    ),
                },
            ) as span:
                result = await self._pool.run(
                    Invocation(
                        function_key=self.context_key(config),
                        code=code,
                        events=body,
                        settings=settings,
                        batch=batch,
                        timeout_s=config.timeout.ToTimedelta().total_seconds(),
                        secrets=secrets,
                        count=len(refs),
                        trace_headers=outgoing_trace(span) if config.propagate_trace else (),
                        tenant=config.workspace_id,
                    )
                )
                observed(annotate, span, result)
                observed(record_fetches, span, result.requests)
                # What these events do next (a retry, a dead letter) continues from here.
                invoked = trace.set_span_in_context(span)
                for ref in dict.fromkeys(refs):
                    ref.trace = invoked
        if self._metrics is not None:
            observed(self._metrics.record, config.id, batch, result)
        await self._settlement.act(config, body, refs, result)

    async def drain(self, grace: float) -> bool:
        """Flush pending batches and wait for in-flight invocations; False past the grace.

        A pack whose code was loading meanwhile starts its invocation (or batch) when the
        loading ends: that is waited for too."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while True:
            for function_key in list(self._pending):
                self._flush(function_key)
            if not self._tasks:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
