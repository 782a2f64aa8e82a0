"""The durable JetStream consumer shared by every executor process, and RETRY publishing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from eventfn.registry.v1 import registry_pb2 as rpb
from services.common import streams
from services.common.config_watch import ConfigWatcher
from services.common.delivery_records import DeliveryRecorder, FailureSample
from services.common.packs import dedupe_id, pack_count
from services.executor.dispatcher import Dispatcher, PackRef, last_logs, split_pack
from services.executor.versions import VersionSource
from services.runtime import InvocationResult

log = logging.getLogger(__name__)
DURABLE = "executor"
# A pull request lives this long on the server; one left over after stop() would take
# (and strand until ack_wait) a pack handed back before it expires.
FETCH_SECONDS = 1.0
MAX_HISTORY = 20
PROPAGATOR = TraceContextTextMapPropagator()
MAX_REQUESTS = 20


class Handoff:
    """Store events durably elsewhere: retryable ones in RETRY, finished retries in DEAD."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def __call__(
        self,
        kind: str,
        config: rpb.InstanceConfig,
        events: list[bytes],
        ref: PackRef,
        error: str,
        result: InvocationResult,
    ) -> None:
        """Publish one message for events of one pack, with their history (awaiting the ack)."""
        ids = [str(orjson.loads(e).get("messageId", "")) for e in events]
        history = orjson.loads(ref.history) if ref.history else []
        history.append(
            {"attempt": ref.attempt, "time": datetime.now(UTC).isoformat(), "error": error[:500]}
        )
        headers = {
            streams.MSG_ID: f"{dedupe_id(config.id, ids)}:{kind}{ref.attempt}",
            streams.COUNT: str(len(events)),
            streams.ATTEMPT: str(ref.attempt),
            streams.FIRST_ATTEMPT_AT: ref.first_attempt_at,
            streams.LAST_ERROR: error[:1000],
            streams.HISTORY: orjson.dumps(history[-MAX_HISTORY:]).decode(),
            # JSON-encoded: header values cannot hold line breaks.
            streams.LAST_LOGS: orjson.dumps(last_logs(result)).decode(),
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
        if ref.trace is not None:  # the retry continues the event's trace
            PROPAGATOR.inject(headers, context=ref.trace)
        subject = (streams.retry_subject if kind == "retry" else streams.dead_subject)(
            config.workspace_id, config.id
        )
        await self._js.publish(subject, b"[" + b",".join(events) + b"]", headers=headers)


class PackConsumer:
    """Pull packs from EVENTS, with a bound on packs in flight, and dispatch them."""

    def __init__(
        self,
        js: JetStreamContext,
        watcher: ConfigWatcher,
        dispatcher: Dispatcher,
        recorder: DeliveryRecorder,
        *,
        fetch_packs: int,
        max_inflight: int,
        ack_wait: float,
        versions: VersionSource,
        durable: str = DURABLE,
        subjects: str = "events.>",
    ) -> None:
        self._js = js
        self._watcher = watcher
        self._dispatcher = dispatcher
        self._recorder = recorder
        self._fetch = fetch_packs
        self._max_inflight = max_inflight
        self._ack_wait = ack_wait
        self._versions = versions
        self._durable = durable
        self._subjects = subjects
        self._inflight = 0
        self._unsettled: dict[int, Msg] = {}  # by id(msg): handed back if shutdown runs out
        self._room = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._stopped_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.packs = 0

    def start(self) -> None:
        """Start pulling (after the first configuration snapshot)."""
        self._task = asyncio.create_task(self._run(), name="pack-consumer")

    async def stop(self) -> None:
        """Stop pulling; packs in flight finish on their own."""
        self._stopping.set()
        self._stopped_at = asyncio.get_running_loop().time()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await self._watcher.ready.wait()
        sub = await self._js.pull_subscribe(
            self._subjects,
            durable=self._durable,
            stream=streams.EVENTS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_deliver=-1,
                max_ack_pending=max(self._max_inflight * 4, 1024),
            ),
        )
        while not self._stopping.is_set():
            async with self._room:
                await self._room.wait_for(lambda: self._inflight < self._max_inflight)
                want = min(self._fetch, self._max_inflight - self._inflight)
            try:
                msgs = await sub.fetch(want, timeout=FETCH_SECONDS)
            except TimeoutError:
                continue
            except Exception as error:  # NATS reconnecting: keep trying
                log.warning("fetch from EVENTS failed: %r", error)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._inflight += 1
                self._unsettled[id(msg)] = msg
                self.packs += 1
                try:
                    await self._handle(msg)
                except Exception:
                    log.exception("pack %s could not be dispatched; handing it back", msg.subject)
                    await self._settle(msg, False)

    async def hand_back(self) -> int:
        """Nak every pack not settled yet, so another executor takes it now; return how many."""
        if self._stopped_at is not None:  # let our last pull request expire first
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._stopped_at + FETCH_SECONDS + 0.1 - loop.time()))
        pending = list(self._unsettled.values())
        for msg in pending:
            await self._settle(msg, False)
        return len(pending)

    async def _settle(self, msg: Msg, ok: bool) -> None:
        if self._unsettled.pop(id(msg), None) is None:
            return  # already settled (e.g. handed back at shutdown)
        try:
            await (msg.ack() if ok else msg.nak())
        except Exception as error:  # the ack is lost: the pack comes back after ack_wait
            log.warning("ack of %s failed: %r", msg.subject, error)
        async with self._room:
            self._inflight -= 1
            self._room.notify_all()

    async def _handle(self, msg: Msg) -> None:
        subject = streams.parse_subject(msg.subject)
        config = self._watcher.instances.get(subject.instance_id)
        if config is None or not config.enabled:
            self._discard(
                msg,
                subject.workspace_id,
                subject.instance_id,
                config,
                reason="instance deleted" if config is None else "instance disabled",
            )
            await self._settle(msg, True)
            return
        headers = msg.headers or {}
        ref = PackRef(
            settle=lambda ok: self._settle(msg, ok),
            remaining=0,
            attempt=int(headers.get(streams.ATTEMPT, "1") or 1),
            first_attempt_at=headers.get(streams.FIRST_ATTEMPT_AT) or datetime.now(UTC).isoformat(),
            history=headers.get(streams.HISTORY, ""),
            trace=PROPAGATOR.extract(headers) if streams.TRACEPARENT in headers else None,
        )
        if msg.data.strip() in (b"", b"[]"):
            await self._settle(msg, True)
            return
        ref.count = pack_count(headers.get(streams.COUNT), msg.data)
        wanted = headers.get(streams.VERSION)
        if wanted and wanted != config.version_id:
            version = await self._versions.get(wanted)
            if version is None or version.function_id != config.function_id:
                self._discard(
                    msg,
                    subject.workspace_id,
                    subject.instance_id,
                    config,
                    reason=f"version {wanted} of the function no longer exists",
                )
                await self._settle(msg, True)
                return
            config = self._versions.pinned(config, version)
        await self._dispatcher.submit(config, msg.data, ref)

    def _discard(
        self,
        msg: Msg,
        workspace_id: str,
        instance_id: str,
        config: rpb.InstanceConfig | None,
        *,
        reason: str,
    ) -> None:
        """Record a pack that cannot run (instance or version gone) as discarded, with why."""
        events = split_pack(msg.data)
        log.info("%d events for %s discarded: %s", len(events), instance_id, reason)
        self._recorder.count(
            instance_id,
            workspace_id,
            config.function_id if config else "",
            {"discarded": len(events)},
        )
        now = datetime.now(UTC)
        for event in events[:1]:
            self._recorder.sample(
                FailureSample(
                    instance_id=instance_id,
                    time=now,
                    message_id=str(orjson.loads(event).get("messageId", "")),
                    version_id=config.version_id if config else "",
                    outcome="discard",
                    error_type="InstanceUnavailable",
                    error_message=f"{reason}; {len(events)} event(s) of the pack discarded",
                    error_stack="",
                    event=event.decode(),
                    logs="",
                )
            )
