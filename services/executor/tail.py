"""TailEvents: the packs stored in EVENTS for the caller's instances, as the caller may read them.

`eventfn events tail` used to read NATS itself, with the deployment's one NATS account:
whoever was given its URL to tail could read every workspace's packs, store forged ones (run
with the victim's settings) and purge the streams. The executor reads them for the caller
now, and sends only packs of its own workspace's instances that it may read.

The start: the last `last` matching packs. JetStream counts matching messages from a sequence
on (a consumer's pending count), not back from the end, so the tail finds by bisection the
last sequence from which `last` packs match (about 17 counts over the SCAN newest messages),
and reads nothing before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from eventfn_api.executor.v1 import executor_pb2 as pb
from services.common import names, streams
from services.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from services.common.pull import NATS_ERRORS
from services.common.registry_gate import RegistryGate
from services.common.workspace_budget import WorkspaceBudget

MAX_LAST = 1000
TAILS_PER_WORKSPACE = 10
TAILS_PER_MEMBER = 5  # so one member (who may read nothing) cannot hold the workspace's all
TAILS_PER_EXECUTOR = 200
RETRY_FULL_SECONDS = 5.0
# The stream's newest messages a tail's start looks among, at most.
SCAN = 100_000
# Packs a fetch brings at most (up to 1 MB each, held until the caller reads them).
BATCH = 10
FOLLOW_WAIT = 2.0  # seconds a fetch waits for new packs
# How often a call's caller and its access are checked again while packs come.
RECHECK_SECONDS = 30.0
# An abandoned consumer (an executor killed mid-tail) is removed by JetStream after this.
IDLE = timedelta(seconds=30)


class EventTail:
    """Serve TailEvents calls; a workspace has at most TAILS_PER_WORKSPACE open at once, a
    member TAILS_PER_MEMBER of them, and starts them within its budget (`starts`)."""

    def __init__(self, js: JetStreamContext, gate: RegistryGate, starts: WorkspaceBudget) -> None:
        self._js = js
        self._gate = gate
        self._starts = starts
        self._open: Counter[str] = Counter()  # by workspace
        self._open_by: Counter[str] = Counter()  # by member

    async def tail(
        self, request: pb.TailEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TailEventsResponse]:
        """Authorize, then stream the packs (see the module's docstring)."""
        me = await self._gate.whoami(context)
        workspace = names.parent("parent", request.parent, names.last(me.workspace.name))
        instance_id = None
        if request.instance:
            instance_id = names.parse("instance", request.instance, names.INSTANCE, workspace)
            await self._gate.instance(context, request.instance)
        if not 0 <= request.last <= MAX_LAST:
            raise InvalidArgument.field("last", f"must be 0..{MAX_LAST}, not {request.last}")
        if self._open[workspace] >= TAILS_PER_WORKSPACE:
            raise ResourceExhausted(
                f"workspace {workspace} has {TAILS_PER_WORKSPACE} TailEvents calls open on this "
                "executor, the most it may: end one first",
                retry_after=None,
            )
        member = me.member.name
        if self._open_by[member] >= TAILS_PER_MEMBER:
            raise ResourceExhausted(
                f"{member} has {TAILS_PER_MEMBER} TailEvents calls open on this executor, the "
                "most a member may: end one first",
                retry_after=None,
            )
        if self._open.total() >= TAILS_PER_EXECUTOR:
            raise ResourceExhausted(
                f"this executor serves {TAILS_PER_EXECUTOR} TailEvents calls, the most it may: "
                "retry shortly",
                retry_after=RETRY_FULL_SECONDS,
            )
        self._starts.take(workspace)
        self._open[workspace] += 1
        self._open_by[member] += 1
        readable: dict[str, bool] = {}
        loop = asyncio.get_running_loop()
        checked = loop.time()
        try:
            subjects = streams.subject_filter(
                "events", workspace_id=workspace, instance_id=instance_id
            )
            # Its initial metadata once its start is fixed: a pack stored after it came is sent.
            started = functools.partial(context.send_initial_metadata, ())
            packs = self._messages(subjects, request.last, request.follow, started)
            async with contextlib.aclosing(packs):  # its consumer goes as the call ends
                async for msg in packs:
                    instance = streams.parse_subject(msg.subject).instance_id
                    name = names.INSTANCE.name(workspace, instance)
                    if loop.time() - checked > RECHECK_SECONDS:  # revoked token, changed roles
                        await self._gate.whoami(context)
                        readable.clear()
                        checked = loop.time()
                    if instance not in readable:
                        found = await self._gate.readable_instance(context, name)
                        readable[instance] = found is not None
                    if readable[instance]:
                        yield pack_message(name, msg)
        finally:
            for counts, key in ((self._open, workspace), (self._open_by, member)):
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]

    async def _messages(
        self, subjects: str, last: int, follow: bool, started: Callable[[], Awaitable[None]]
    ) -> AsyncGenerator[Any, None]:
        try:
            first, left = await self._first(subjects, last)
            async with self._consumer(subjects, first) as sub:
                await started()
                while follow or left:
                    try:
                        batch = await sub.fetch(BATCH, timeout=FOLLOW_WAIT)
                    except TimeoutError:
                        if follow:
                            continue
                        break  # fewer than `last` (some aged out meanwhile)
                    for msg in batch:
                        left = max(0, left - 1)
                        yield msg
        except NATS_ERRORS as error:
            raise Unavailable(f"the event store (NATS) did not answer: {error!r}") from None

    async def _first(self, subjects: str, last: int) -> tuple[int, int]:
        """The sequence a tail starts at, and how many packs stored already it shows."""
        info = await self._js.stream_info(streams.EVENTS_STREAM)
        end = info.state.last_seq + 1
        if not last:
            return end, 0
        low = max(info.state.first_seq, end - SCAN, 1)
        total = await self._count(subjects, low)
        if total <= last:
            return low, total
        high = end  # from `low` more than `last` packs match, from `high` none: the start is
        while high - low > 1:  # the last sequence from which `last` still do
            middle = (low + high) // 2
            if await self._count(subjects, middle) >= last:
                low = middle
            else:
                high = middle
        return low, last

    async def _count(self, subjects: str, start: int) -> int:
        """How many packs match from sequence `start` on (a consumer's pending count)."""
        made = await self._js.add_consumer(streams.EVENTS_STREAM, _config(subjects, start))
        await asyncio.shield(self._delete(made.name))
        return made.num_pending or 0

    @contextlib.asynccontextmanager
    async def _consumer(self, subjects: str, start: int) -> AsyncIterator[Any]:
        """A pull subscription of the matching packs from sequence `start` on; its consumer
        is deleted as it ends, however (JetStream would after IDLE)."""
        made = await self._js.add_consumer(streams.EVENTS_STREAM, _config(subjects, start))
        try:
            sub = await self._js.pull_subscribe_bind(
                consumer=made.name, stream=streams.EVENTS_STREAM
            )
            try:
                yield sub
            finally:
                with contextlib.suppress(*NATS_ERRORS):
                    await sub.unsubscribe()
        finally:
            await asyncio.shield(self._delete(made.name))

    async def _delete(self, consumer: str) -> None:
        with contextlib.suppress(*NATS_ERRORS):
            await self._js.delete_consumer(streams.EVENTS_STREAM, consumer)


def _config(subjects: str, start: int) -> ConsumerConfig:
    return ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start,
        ack_policy=AckPolicy.NONE,
        filter_subject=subjects,
        inactive_threshold=IDLE.total_seconds(),
        mem_storage=True,
    )


def pack_message(instance: str, msg) -> pb.TailEventsResponse:
    """Convert a stored pack to its proto."""
    stored = timestamp_pb2.Timestamp()
    stored.FromDatetime(msg.metadata.timestamp)
    # Not its sequence number in EVENTS: the steps between two would count other tenants' packs.
    return pb.TailEventsResponse(
        instance=instance,
        store_time=stored,
        events_json=msg.data.decode("utf-8", "replace"),
    )
