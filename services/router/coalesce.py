"""Group commit of packs per instance: the events of concurrent requests share JetStream
messages, so the fsync each message costs is paid once for many requests.

Packs of one instance's subject wait in its lane and go out merged (up to the pack cap), one
message at a time: while a publish is in flight, later packs wait for its acknowledgement.
While requests for the subject come at least twice per `window` (20 ms by default,
`EVENTFN_ROUTER_COALESCE_WINDOW_MS`) and at least `busy_rate` a second (200 by default,
`EVENTFN_ROUTER_COALESCE_MIN_RATE`), waiting packs are also held until the oldest of them has
waited the window, or until every sender seen in the last 100 ms has as many packs waiting
as it keeps under way. An HTTP connection sends its next request only after its answer, so
once every connection seen lately is in nothing else can come: a client sending one request
after another is never held, and a few in step leave together at once. A gRPC peer (one
channel) keeps several calls under way: its packs are held until as many of them wait as it
had unacknowledged at once lately, so one client's concurrent calls share a message rather
than one each (a unary `Ingest` client with 16 calls in flight: 0.06 messages a call instead
of ≈ 0.45, the NATS server's CPU per event a third), while only such peers' packs wait.
Waiting for *another* sender stops once the packs hold 100 events (batches share their
message's costs already: holding one client's batch for another's would only add to its
latency). A pack counts as under way until it is acknowledged or its request gives up. At
lower rates nothing is held, so their latency does not grow. A request is answered only once
every pack holding its events is acknowledged.

Every message costs an fsync, a delivery, an executor pass, a V8 worker frame and the trace
records of each: at 1,000 single-event requests/s from many connections a 20 ms window makes
≈ 22 events a message (≈ 12 with 10 ms, ≈ 7 with 5). From 10 to 20 ms the platform's CPU per
event fell by an eighth at 500 and 1,000 requests/s (`bench latency`, interleaved runs:
1.82–1.83× the load generator's at 1,000/s against 2.01–2.09×), for ≈ 7 ms more median
latency there (p50 18 ms; p99 29–31 ms, no worse: the lighter load steadies the tail).

A merged pack's dedupe id covers all its messageIds, so it no longer matches a client's
retry of one of its requests; `RecentIds` keeps, per instance, the messageIds stored in the
last ten minutes (or up to twenty), and the router drops repeats (as Segment deduplicates by
messageId).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from services.common.packs import Pack, merged_dedupe_id
from services.common.streams import COUNT, MESSAGE_IDS, MSG_ID, TRACE_LINKS, TRACEPARENT
from services.common.telemetry import message_ids

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[Awaitable[object]]]
MAX_TRACE_LINKS = 16
WINDOW_SECONDS = 0.020
# Requests a second to one subject from which packs are held for a window: below it a window
# would cost each request latency and gather little.
BUSY_RATE = 200.0
# Weight of the newest gap between two requests of a subject in its running average.
GAP_WEIGHT = 0.3
MAX_SUBJECTS = 10_000
# A sender seen this recently may send again soon: a window waits for it.
SENDER_MEMORY_SECONDS = 0.1
# Packs holding this many events go out without waiting for more: a message's fsync and
# crossings are already shared by enough events, and larger messages only add latency.
HOLD_EVENTS = 100


@dataclass(frozen=True, slots=True)
class Outbound:
    """One pack ready to publish: subject, body and headers."""

    subject: str
    instance_id: str
    pack: Pack
    headers: dict[str, str]


def merge(instance_id: str, items: Sequence[Outbound], max_bytes: int) -> list[Outbound]:
    """Merge packs of one subject, in order, into as few packs as fit `max_bytes` each.

    A pack is never split; one larger than the cap stays alone. The first pack's headers
    lead (its trace continues); the others' traces become links.
    """
    out: list[Outbound] = []
    run: list[Outbound] = []
    # A merged body is `[` + the packs' insides joined by commas + `]`: 1 + Σ(len(body) - 1).
    size = 1
    for item in [*items, None]:
        extra = 0 if item is None else len(item.pack.body) - 1
        if item is None or (run and size + extra > max_bytes):
            if run:
                out.append(_joined(instance_id, run))
            run, size = [], 1
        if item is not None:
            run.append(item)
            size += extra
    return out


def _joined(instance_id: str, run: Sequence[Outbound]) -> Outbound:
    if len(run) == 1:
        return run[0]
    ids = tuple(itertools.chain.from_iterable(item.pack.message_ids for item in run))
    body = b"[" + b",".join(item.pack.body[1:-1] for item in run if len(item.pack.body) > 2) + b"]"
    pack = Pack(body, merged_dedupe_id(instance_id, (item.pack for item in run)), ids)
    first = run[0]
    headers = dict(first.headers)
    headers[MSG_ID] = pack.dedupe_id
    headers[COUNT] = str(pack.count)
    headers[MESSAGE_IDS] = orjson.dumps(message_ids(ids)).decode()
    links = list(
        dict.fromkeys(
            i.headers[TRACEPARENT]
            for i in run[1:]
            if TRACEPARENT in i.headers and i.headers[TRACEPARENT] != headers.get(TRACEPARENT)
        )
    )[:MAX_TRACE_LINKS]
    if links:
        headers[TRACE_LINKS] = orjson.dumps(links).decode()
    return Outbound(first.subject, instance_id, pack, headers)


@dataclass(eq=False, slots=True)
class _Generations:
    """One instance's remembered messageIds: the current set and the one before it."""

    since: float  # when the current set began
    current: set[str] = field(default_factory=set)
    previous: set[str] = field(default_factory=set)
    previous_since: float = 0.0


class RecentIds:
    """The messageIds stored per instance lately: each is remembered for at least `seconds`
    (at most twice that) unless more than `limit` arrive for its instance meanwhile, which
    pushes out that instance's oldest ones first: one tenant's flood forgets its own ids,
    not its neighbours'. All instances together hold at most `total`; past it, the instance
    holding the most forgets its oldest first.

    Two generations of sets per instance: ids go into the current one; when it is `seconds`
    old or a request's ids would take it past half the limit, it becomes the previous one
    (the older is dropped), and the previous one is dropped once it began twice `seconds`
    ago. Lookups and inserts take a request's ids at once: set operations, not a Python call
    per event. Instances that went quiet are swept every `seconds`.
    """

    def __init__(
        self,
        seconds: float = 600.0,
        limit: int = 100_000,
        total: int = 400_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < limit:
            raise ValueError(f"the total ({total}) must hold one instance's limit ({limit})")
        self._seconds = seconds
        self._half = max(1, limit // 2)
        self._total = total
        self._clock = clock
        self._instances: dict[str, _Generations] = {}
        self._held = 0  # ids held, all instances together
        self._swept = clock()

    def seen(self, instance_id: str, message_ids: Iterable[str]) -> set[str]:
        """Return which of these messageIds this instance stored recently."""
        held = self._instances.get(instance_id)
        if held is None:
            return set()
        self._age(held, self._clock())
        found = held.current.intersection(message_ids)
        if held.previous:
            found |= held.previous.intersection(message_ids)
        return found

    def add(self, instance_id: str, ids: Collection[str]) -> None:
        """Remember messageIds an instance stored."""
        now = self._clock()
        held = self._instances.get(instance_id)
        if held is None:
            held = self._instances[instance_id] = _Generations(now)
        else:
            self._age(held, now)
        if held.current and len(held.current) + len(ids) > self._half:
            self._rotate(held, now)  # first: a request's ids are always in the current set
        before = len(held.current)
        held.current.update(ids)
        self._held += len(held.current) - before
        if now - self._swept >= self._seconds:
            self._sweep(now)
        while self._held > self._total:
            self._shed(instance_id)

    def _age(self, held: _Generations, now: float) -> None:
        if now - held.since >= self._seconds:
            self._rotate(held, now)
        if held.previous and now - held.previous_since >= 2 * self._seconds:
            self._held -= len(held.previous)  # all of it past the window
            held.previous = set()

    def _rotate(self, held: _Generations, now: float) -> None:
        self._held -= len(held.previous)
        held.previous, held.previous_since = held.current, held.since
        held.current, held.since = set(), now

    def _sweep(self, now: float) -> None:
        self._swept = now
        for instance_id, held in list(self._instances.items()):
            self._age(held, now)
            if not held.current and not held.previous:
                del self._instances[instance_id]

    def _shed(self, adding: str) -> None:
        """Forget the oldest ids of the instance holding the most: its previous set, or its
        current one unless it holds the request being added."""
        by_size = sorted(
            self._instances.items(),
            key=lambda item: len(item[1].current) + len(item[1].previous),
            reverse=True,
        )
        for name, held in by_size:
            if held.previous:
                self._held -= len(held.previous)
                held.previous = set()
                return
            if name != adding:
                self._held -= len(held.current)
                held.current = set()
                return


@dataclass(eq=False, slots=True)
class _Sender:
    """One sender of a subject: when its last pack came, its packs not yet acknowledged, and
    the most of them at once lately (one for an HTTP connection; up to its concurrent calls
    for a gRPC peer)."""

    seen: float
    open: int = 0
    peak: int = 0
    peak_at: float = 0.0

    def opened(self, now: float) -> None:
        """Count a pack of its arriving now."""
        self.seen = now
        self.open += 1
        if self.open >= self.peak or now - self.peak_at >= SENDER_MEMORY_SECONDS:
            self.peak, self.peak_at = self.open, now

    def closed(self, _: asyncio.Future[None]) -> None:
        """Count one of its packs no longer awaited (acknowledged, failed or given up on)."""
        self.open -= 1


@dataclass(eq=False)
class _Flow:
    """What is known of one subject's traffic: when its last pack came, the running average
    gap between its packs, and who sent lately (oldest first)."""

    last: float = 0.0
    gap: float = math.inf
    senders: dict[Hashable, _Sender] = field(default_factory=dict)


@dataclass(eq=False)
class _Lane:
    """Packs waiting for one subject, how many per sender, whether only pipelined senders'
    wait and which of them are still short of their calls, and whether its drain task runs."""

    waiting: list[tuple[Outbound, asyncio.Future[None]]] = field(default_factory=list)
    first_at: float = 0.0  # when the oldest waiting pack came
    events: int = 0  # events in the waiting packs
    senders: Counter[Hashable] = field(default_factory=Counter)  # waiting packs per sender
    anonymous: bool = False  # a waiting pack's sender is unknown
    # Pipelined senders with fewer packs waiting than they lately kept under way.
    short: set[Hashable] = field(default_factory=set)
    mixed: bool = False  # a waiting pack's sender is unknown or keeps one request under way
    busy: bool = False
    # Open while the waiting packs are held for more: done when the window closes.
    window: asyncio.Future[None] | None = None


class Coalescer:
    """Publish packs per subject with group commit (see the module's docstring)."""

    def __init__(
        self,
        publish: Publish,
        *,
        max_bytes: int,
        timeout: float,
        recent: RecentIds,
        window: float = WINDOW_SECONDS,
        busy_rate: float = BUSY_RATE,
    ) -> None:
        self._publish = publish
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._window = window
        # The longest average gap between packs at which they are held: two due within a
        # window, at `busy_rate` or faster.
        self._busy_gap = min(window / 2, 1 / busy_rate)
        self.recent = recent
        self._lanes: dict[str, _Lane] = {}
        self._flows: dict[str, _Flow] = {}
        self._purge_at = 0.0  # forgetting quiet subjects runs at most once a second
        self._tasks: set[asyncio.Task[None]] = set()
        self.messages = 0  # JetStream messages published

    def submit(
        self, item: Outbound, sender: Hashable | None = None, *, continues: bool = False
    ) -> asyncio.Future[None]:
        """Queue a pack; the future is done once the message holding it is acknowledged.

        `sender` names who sent it (an HTTP connection, a gRPC peer): packs are held no
        longer once every sender seen lately has as many waiting as it keeps under way.
        None: unknown, the hold runs its time. `continues`: the pack holds more events of
        the request whose previous pack for this subject came just before: not another
        request under way.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        lane = self._lanes.get(item.subject)
        if lane is None:  # (not setdefault: a _Lane built per pack was 5 % of the loop)
            lane = self._lanes[item.subject] = _Lane()
        flow, known = self._arrived(item.subject, None if continues else sender)
        if not lane.waiting:
            lane.first_at = flow.last
            lane.events = 0
            lane.senders.clear()
            lane.anonymous = False
            lane.short.clear()
            lane.mixed = False
        lane.waiting.append((item, future))
        lane.events += item.pack.count
        if sender is None:
            lane.anonymous = lane.mixed = True
        elif known is not None:
            future.add_done_callback(known.closed)
            waiting = lane.senders[sender] = lane.senders[sender] + 1
            if known.peak <= 1:  # one request under way (an HTTP connection)
                lane.mixed = True
            elif waiting < known.peak:
                lane.short.add(sender)
            else:
                lane.short.discard(sender)
        if lane.window is not None and not self._worth_holding(lane, flow):
            _close(lane.window)
        if not lane.busy:
            lane.busy = True
            task = loop.create_task(self._drain(item.subject, lane, flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return future

    def _arrived(self, subject: str, sender: Hashable | None) -> tuple[_Flow, _Sender | None]:
        """Note a pack for `subject` now (its gap, its sender); return the subject's flow and
        what it knows of the sender."""
        now = time.monotonic()
        flow = self._flows.get(subject)
        if flow is None:
            flow = self._flows[subject] = _Flow()
        if flow.last:
            newest, gap = now - flow.last, flow.gap
            flow.gap = newest if gap == math.inf else gap + GAP_WEIGHT * (newest - gap)
        flow.last = now
        known = None
        if sender is not None:
            senders = flow.senders
            known = senders.pop(sender, None)  # re-inserted last: the dict stays oldest first
            if known is None:
                known = _Sender(now)
            senders[sender] = known
            known.opened(now)
            for oldest, state in list(itertools.islice(senders.items(), 8)):
                if now - state.seen < SENDER_MEMORY_SECONDS:
                    break
                del senders[oldest]
        if len(self._flows) > MAX_SUBJECTS and now >= self._purge_at:
            # Forget subjects quiet for a while (with more than MAX_SUBJECTS busy ones, this
            # would otherwise copy them all on every request).
            self._flows = {k: v for k, v in self._flows.items() if now - v.last < 10.0}
            self._purge_at = now + 1.0
        return flow, known

    def _worth_holding(self, lane: _Lane, flow: _Flow) -> bool:
        """Tell whether waiting packs should wait for more (until the oldest has waited a
        window): at least two more packs are due within one (and at `busy_rate` or faster),
        and the packs come from gRPC peers only, one of which has fewer waiting than it lately
        kept under way, or, while they hold fewer than HOLD_EVENTS events, a recent sender has
        none waiting (one client's full batch is not held for another's)."""
        if flow.gap > self._busy_gap:
            return False
        if lane.short and not lane.mixed:
            return True  # more of a client's own calls are on their way
        return lane.events < HOLD_EVENTS and (
            lane.anonymous or len(lane.senders) < len(flow.senders)
        )

    async def _drain(self, subject: str, lane: _Lane, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.waiting:
                hold = lane.first_at + self._window - time.monotonic()
                if hold > 0 and self._worth_holding(lane, flow):
                    lane.window = loop.create_future()
                    timer = loop.call_later(hold, _close, lane.window)
                    try:
                        await lane.window
                    finally:
                        timer.cancel()
                        lane.window = None
                batch, lane.waiting = lane.waiting, []
                await self._send(batch)
        finally:
            lane.busy = False
            if not lane.waiting:
                self._lanes.pop(subject, None)

    async def _send(self, batch: list[tuple[Outbound, asyncio.Future[None]]]) -> None:
        instance_id = batch[0][0].instance_id
        items = [item for item, _ in batch]
        futures = [future for _, future in batch]
        merged = merge(instance_id, items, self._max_bytes)
        acks: list[Awaitable[object]] = []
        try:
            async with asyncio.timeout(self._timeout):
                for m in merged:
                    acks.append(await self._publish(m.subject, m.pack.body, m.headers))
                self.messages += len(merged)
                results = await asyncio.gather(*acks, return_exceptions=True)
        except Exception as error:  # handed to every request waiting on it, which maps it
            for ack in acks:
                if isinstance(ack, asyncio.Future):
                    ack.cancel()  # releases the client's in-flight slot
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        for m, result in zip(merged, results, strict=True):
            if not isinstance(result, BaseException):
                self.recent.add(instance_id, m.pack.message_ids)
        for future in futures:
            if future.done():
                continue
            if failed is None:
                future.set_result(None)
            else:
                future.set_exception(failed)


def _close(window: asyncio.Future[None]) -> None:
    if not window.done():
        window.set_result(None)
