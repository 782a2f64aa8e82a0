"""The durable JetStream consumer shared by every executor process."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import NamedTuple

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventfn_api.registry.v1 import registry_pb2 as rpb
from services.common import streams, tasks
from services.common.config_watch import ConfigWatcher
from services.common.deliveries.recorder import DeliveryRecorder, FailureSample
from services.common.once_per import OncePer
from services.common.packs import header_strings, pack_count
from services.common.pull import FETCH_SECONDS, NATS_ERRORS, pull_forever
from services.common.telemetry import extract as extract_trace
from services.executor.defer import Pacer, Stalls, defer_delay
from services.executor.dispatcher import Dispatcher
from services.executor.pack_ref import PackRef, split_pack
from services.executor.versions import VersionSource

log = logging.getLogger(__name__)
DURABLE = "executor"
DEFER_LOG_SECONDS = 60.0
# How often a hand-back also drops what the pacing keeps of instances idle long enough.
FORGET_SWEEP_SECONDS = 60.0
# Packs all executors together may hold unacknowledged (EVENTFN_EXECUTOR_CONSUMER_MAX_PENDING):
# no bound. Handed-back packs stay pending until they come again, and past a bound JetStream
# delivers nothing more to any executor: one stalled instance's backlog stopped every tenant.
MAX_PENDING = -1
# A pack routed with a configuration revision this executor has not received yet (its watch
# lags the router's) for an instance it does not know is handed back this long, for at most
# CONFIG_LAG_GRACE after it was stored: the instance is new, not deleted.
CONFIG_LAG_DELAY = 0.5
CONFIG_LAG_GRACE = 60.0


class _Held(NamedTuple):
    """A pack taken and not settled yet: whose share it counts in, and since when."""

    msg: Msg
    instance_id: str  # "" until it is counted in an instance's share
    taken_at: float
    workspace_id: str = ""  # set with instance_id


class PackConsumer:
    """Pull packs from EVENTS, with a bound on packs in flight, and dispatch them.

    One instance holds at most a quarter of the packs in flight (or twice its concurrency,
    if more: enough to keep it busy): its packs wait for its own concurrency inside the
    executor, and an instance whose handler waits out its timeout would otherwise fill every
    slot with packs that cannot run, and every other tenant's events would wait behind them.
    A workspace holds at most the slots divided among the busy workspaces with one more, a
    newcomer (half of them alone, a third beside one other, ...; at least one): four such
    instances of one tenant filled every slot, and two tenants at half each did too. Packs
    already in flight are not taken back; a workspace over its share takes no more until it
    is under it again. A pack over either share goes back to the stream, to come again a
    little later (later each time, or when its pace says a slot is free); the
    packs behind it are pulled meanwhile.
    """

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        watcher: ConfigWatcher,
        dispatcher: Dispatcher,
        recorder: DeliveryRecorder,
        *,
        fetch_packs: int,
        max_inflight: int,
        instance_concurrency: int,
        ack_wait: float,
        versions: VersionSource,
        max_pending: int = MAX_PENDING,
        durable: str = DURABLE,
        subjects: str = "events.>",
    ) -> None:
        self._nc = nc
        self._js = js
        self._watcher = watcher
        self._dispatcher = dispatcher
        self._recorder = recorder
        self._fetch = fetch_packs
        self._max_inflight = max_inflight
        self._ack_wait = ack_wait
        self._max_pending = max_pending
        self._versions = versions
        self._durable = durable
        self._subjects = subjects
        self._inflight = 0
        self._share = max(2 * instance_concurrency, max_inflight // 4, 1)
        self._per_instance: dict[str, int] = {}  # packs in flight per instance
        self._per_workspace: dict[str, int] = {}  # and per workspace
        self._deferred_logged = OncePer(DEFER_LOG_SECONDS)
        self._stalls = Stalls()
        self._pacer = Pacer()
        self._forget_at = 0.0  # when the two above next drop what is idle
        self._unsettled: dict[int, _Held] = {}  # by id(msg): handed back if shutdown runs out
        self._room = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._stopped_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.packs = 0

    @property
    def in_flight(self) -> int:
        """Return the packs taken and not settled yet."""
        return self._inflight

    def start(self) -> None:
        """Start pulling (after the first configuration snapshot)."""
        self._task = asyncio.create_task(self._run(), name="pack-consumer")
        self._heartbeat = asyncio.create_task(self._keep_held(), name="pack-heartbeat")

    async def close(self) -> None:
        """Stop telling JetStream about held packs (after `stop`, once they are settled)."""
        await tasks.stop(self._heartbeat)

    async def _keep_held(self) -> None:
        """Tell JetStream, every third of `ack_wait`, that packs held that long are in work.

        An instance's packs wait for its own concurrency inside the executor, longer than
        `ack_wait` behind a slow handler or a backlog: JetStream would deliver them again
        meanwhile, and the function would get their events twice.
        """
        period = self._ack_wait / 3
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            due = loop.time() - period
            for held in [h for h in self._unsettled.values() if h.taken_at <= due]:
                try:
                    await held.msg.in_progress()
                except NATS_ERRORS as error:  # it may come again after ack_wait: at least once
                    log.warning("in-progress of %s failed: %r", held.msg.subject, error)

    async def stop(self) -> None:
        """Stop pulling; packs in flight finish on their own."""
        self._stopping.set()
        self._stopped_at = asyncio.get_running_loop().time()
        await tasks.stop(self._task)

    async def _run(self) -> None:
        await self._watcher.ready.wait()
        await pull_forever(
            self._nc,
            self._js,
            subjects=self._subjects,
            stream=streams.EVENTS_STREAM,
            durable=self._durable,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=self._ack_wait,
                max_deliver=-1,
                # Shared by every executor, and packs handed back for their instance's share
                # stay pending until they come again: a bound capped the fleet at a number of
                # executors, and let one instance's backlog stop deliveries to all.
                max_ack_pending=self._max_pending,
            ),
            room=self._room_for,
            handle=self._take,
            stopping=self._stopping,
        )

    async def _room_for(self) -> int:
        """Wait for room (packs in flight are bounded) and say how many packs to ask for."""
        async with self._room:
            await self._room.wait_for(lambda: self._inflight < self._max_inflight)
            return min(self._fetch, self._max_inflight - self._inflight)

    async def _take(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            self._inflight += 1
            self._unsettled[id(msg)] = _Held(msg, "", asyncio.get_running_loop().time())
            try:
                await self._handle(msg)
            except Exception:
                log.exception("pack %s could not be dispatched; handing it back", msg.subject)
                await self._settle(msg, False, delay=_again(msg))

    async def hand_back(self) -> int:
        """Nak every pack not settled yet, so another executor takes it now; return how many."""
        if self._stopped_at is not None:  # let our last pull request expire first
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._stopped_at + FETCH_SECONDS + 0.1 - loop.time()))
        pending = [held.msg for held in self._unsettled.values()]
        for msg in pending:
            await self._settle(msg, False)
        return len(pending)

    async def _settle(self, msg: Msg, ok: bool, *, delay: float | None = None) -> None:
        held = self._unsettled.pop(id(msg), None)
        if held is None:
            return  # already settled (e.g. handed back at shutdown)
        instance_id = held.instance_id
        if instance_id:
            now = asyncio.get_running_loop().time()
            self._stalls.settled(instance_id, now)
            self._pacer.settled((instance_id, held.workspace_id), now - held.taken_at, now)
            _uncount(self._per_instance, instance_id)
            _uncount(self._per_workspace, held.workspace_id)
        try:
            await (msg.ack() if ok else msg.nak(delay=delay))
        except NATS_ERRORS as error:  # the ack is lost: the pack comes back after ack_wait
            log.warning("ack of %s failed: %r", msg.subject, error)
        async with self._room:
            self._inflight -= 1
            self._room.notify_all()

    def _workspace_share(self, workspace_id: str) -> int:
        """Return how many packs a workspace may hold: the slots divided among the other busy
        workspaces, itself and one more, so a newcomer always finds room."""
        others = len(self._per_workspace) - (workspace_id in self._per_workspace)
        return max(1, self._max_inflight // (others + 2))

    def _routed_ahead(self, msg: Msg) -> bool:
        """Tell whether a recent pack was routed with a newer configuration than this
        executor's (an instance created or enabled that its watch has not brought yet)."""
        try:
            revision = int((msg.headers or {}).get(streams.REVISION, "0"))
        except ValueError:
            return False
        if revision <= self._watcher.revision:
            return False
        age = datetime.now(UTC) - msg.metadata.timestamp
        return age.total_seconds() < CONFIG_LAG_GRACE

    async def _defer(self, msg: Msg, instance_id: str, workspace_id: str) -> None:
        """Hand back a pack over its instance's (or workspace's) share of the packs in
        flight, for later."""
        self.packs -= 1  # not taken: it comes again
        now = asyncio.get_running_loop().time()
        if now >= self._forget_at:  # they grow only here: so are they swept
            self._stalls.forget_idle(now)
            self._pacer.forget_idle(now)
            self._forget_at = now + FORGET_SWEEP_SECONDS
        stalled = self._stalls.stalled(instance_id, now)
        self._stalls.handed_back(instance_id, now)
        deliveries = msg.metadata.num_delivered or 1
        workspace_full = self._per_instance.get(instance_id, 0) < self._share
        wait = defer_delay(deliveries, stalled=stalled)
        if not stalled:  # a full workspace's instances share its slots: one pace for all
            paced, slots = (
                (workspace_id, self._workspace_share(workspace_id))
                if workspace_full
                else (instance_id, self._share)
            )
            wait = self._pacer.wait(paced, now, slots, wait)
        await self._settle(msg, False, delay=wait)
        if workspace_full:
            if self._deferred_logged.due(workspace_id):
                log.info(
                    "workspace %s has %d packs in flight, over its share of this executor's "
                    "%d beside %d other busy workspaces: its further packs wait in the stream "
                    "meanwhile",
                    workspace_id,
                    self._per_workspace.get(workspace_id, 0),
                    self._max_inflight,
                    len(self._per_workspace) - 1,
                )
        elif self._deferred_logged.due(instance_id):
            log.info(
                "instance %s has %d packs in flight, its share of this executor's %d: "
                "its further packs wait in the stream meanwhile%s",
                instance_id,
                self._share,
                self._max_inflight,
                " (it is stalled: up to ten minutes)" if stalled else "",
            )

    async def _handle(self, msg: Msg) -> None:
        self.packs += 1
        subject = streams.parse_subject(msg.subject)
        config = self._watcher.instances.get(subject.instance_id)
        if (config is None or not config.enabled) and self._routed_ahead(msg):
            self.packs -= 1  # not taken: it comes again
            await self._settle(msg, False, delay=CONFIG_LAG_DELAY)
            return
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
        count = self._per_instance.get(subject.instance_id, 0)
        in_workspace = self._per_workspace.get(subject.workspace_id, 0)
        if count >= self._share or in_workspace >= self._workspace_share(subject.workspace_id):
            await self._defer(msg, subject.instance_id, subject.workspace_id)
            return
        self._per_instance[subject.instance_id] = count + 1
        self._per_workspace[subject.workspace_id] = in_workspace + 1
        self._unsettled[id(msg)] = self._unsettled[id(msg)]._replace(
            instance_id=subject.instance_id, workspace_id=subject.workspace_id
        )
        headers = msg.headers or {}
        ref = PackRef(
            settle=lambda ok: self._settle(msg, ok, delay=None if ok else _again(msg)),
            remaining=0,
            attempt=int(headers.get(streams.ATTEMPT, "1") or 1),
            first_attempt_at=headers.get(streams.FIRST_ATTEMPT_AT) or datetime.now(UTC).isoformat(),
            history=headers.get(streams.HISTORY, ""),
            version=headers.get(streams.VERSION, ""),
            trace=extract_trace(headers) if streams.TRACEPARENT in headers else None,
            seq=msg.metadata.sequence.stream if msg.metadata.sequence else 0,
            message_ids=header_strings(headers.get(streams.MESSAGE_IDS)),
            links=tuple(
                extract_trace({streams.TRACEPARENT: parent})
                for parent in header_strings(headers.get(streams.TRACE_LINKS))
            ),
        )
        if msg.data.strip() in (b"", b"[]"):
            await self._settle(msg, True)
            return
        # A header of 0 on a non-empty body is not to be trusted: count the events.
        ref.count = pack_count(headers.get(streams.COUNT), msg.data) or pack_count(None, msg.data)
        if ref.count == 0:  # an empty array, however spelled
            await self._settle(msg, True)
            return
        wanted = headers.get(streams.VERSION)
        if wanted and wanted != config.version_id:
            version = await self._versions.get(config, wanted)
            if version is None:
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


def _again(msg: Msg) -> float:
    """Return how long a pack whose work failed (its hand-off refused, or a fault of the
    executor) waits before it comes again, as one handed back for its instance's share: handed
    back at once, a refusal that lasts ran its function again without a pause, for ever."""
    return defer_delay(msg.metadata.num_delivered or 1)


def _uncount(counts: dict[str, int], key: str) -> None:
    """Take one off a count, forgetting the key at zero."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
