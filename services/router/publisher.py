"""Route a request's normalized events to instances and publish them as packs to JetStream.

A request's events for one instance make a pack (split at the pack cap); packs of concurrent
requests for one instance share JetStream messages (group commit, `coalesce.py`), and the
request is done only once every message holding its events is acknowledged (stored,
fsynced). Events the integrations object or a filter drops for an instance are not
published for it; they are counted.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from services.common.deliveries.recorder import DeliveryRecorder
from services.common.errors import ResourceExhausted
from services.common.packs import (
    DEFAULT_PACK_BYTES,
    Pack,
    dedupe_id,
    encode_event,
    pack_encoded,
)
from services.common.pull import NATS_ERRORS
from services.common.streams import (
    ATTEMPT,
    COUNT,
    MESSAGE_IDS,
    MSG_ID,
    REVISION,
    TRACEPARENT,
    TRACESTATE,
)
from services.common.telemetry import MESSAGE_IDS_ATTRIBUTE, PROPAGATOR, message_ids
from services.common.telemetry import extract as extract_trace
from services.common.tracer import get_tracer, random_bits
from services.common.workspace_budget import WorkspaceBudget
from services.filters.actions import apply_filters
from services.router.coalesce import (
    BUSY_RATE,
    WINDOW_SECONDS,
    Coalescer,
    Outbound,
    RecentIds,
)
from services.router.config import Route, RouteTable, SourceRoutes
from services.router.integrations import wants
from services.router.observe import RouterMetrics

log = logging.getLogger(__name__)
tracer = get_tracer("eventfn.router")

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
# W3C trace context: a tracestate longer than 512 characters may be dropped whole (and one of
# a client's choosing would ride in every pack's headers, which JetStream bounds).
MAX_TRACESTATE_CHARS = 512


class IngestRefused(Exception):
    """Base of the reasons the router refuses a whole request before storing anything."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReadyError(IngestRefused):
    """The router has no configuration snapshot yet; retry later."""


class UnknownWriteKeyError(IngestRefused):
    """No source has this write key (unknown, or rotated away)."""


class StorageUnavailableError(IngestRefused):
    """JetStream did not acknowledge every pack in time; retry later (dedupe ids hold)."""


class OverBudgetError(IngestRefused):
    """The source stores more than its budget allows; retry after `retry_after` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class RouterStats:
    """Counters of what the router did, for logs and metrics."""

    requests: int = 0
    events: int = 0
    packs: int = 0
    dropped_by_integrations: int = 0
    dropped_by_filters: int = 0
    deduplicated: int = 0  # events a client sent again, stored already
    over_budget: int = 0  # requests refused: their source stored too much lately
    publish_failures: int = 0


def trace_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """Return W3C trace headers continuing the caller's trace, or starting a new one."""
    # As strict as the W3C grammar (and OpenTelemetry): upper case is a malformed header.
    found = _TRACEPARENT.fullmatch(traceparent.strip()) if traceparent else None
    if found is not None and found.group(1) != "0" * 32:
        trace_id, flags = found.group(1), found.group(3)
    else:
        # Random ids as OpenTelemetry makes them (not secrets: a syscall each), never zero.
        trace_id, flags, tracestate = f"{random_bits(128) or 1:032x}", "01", None
    headers = {TRACEPARENT: f"00-{trace_id}-{random_bits(64) or 1:016x}-{flags}"}
    if tracestate and len(tracestate) <= MAX_TRACESTATE_CHARS:  # longer ones may be dropped
        headers[TRACESTATE] = tracestate
    return headers


def route_events(
    routes: Sequence[Route],
    events: Sequence[dict[str, Any]],
    revision: int,
    trace: dict[str, str],
    *,
    pack_bytes: int = DEFAULT_PACK_BYTES,
    stats: RouterStats | None = None,
    dropped: Counter[str] | None = None,
    seen: Callable[[str, Sequence[str]], set[str]] | None = None,
    ids: Sequence[str] | None = None,
) -> list[Outbound]:
    """Decide per route which events it gets (integrations, then filters) and pack them.

    `dropped` receives, per instance id, how many events the integrations object or a filter
    kept from it (the instance's "filtered" count). `seen(instance, messageIds)` returns
    those of the events stored for the instance recently: a client's retries, not published
    again. `ids` are the events' messageIds, when the caller has them already.

    Routes without filters or retries whose destination no event names get the same events:
    they are chosen and packed once, and share the packs' bodies (a source feeding 1,000
    instances, its events naming destinations, chose them per route and event, seconds of
    the router's loop for one request).
    """
    stats = stats if stats is not None else RouterStats()
    dropped = dropped if dropped is not None else Counter()
    if ids is None:
        ids = [str(event.get("messageId", "")) for event in events]
    named: set[str] = set()  # destinations the events' integrations objects name
    for event in events:
        settings = event.get("integrations")
        if type(settings) is dict:
            named.update(settings)
    # An event no filter changed is encoded once, however many instances get it.
    encoded: dict[int, tuple[str, bytes]] = {}
    whole: bytes | None = None  # all the events, unchanged, as one JSON array
    # By destination (None: any that no event names): the packs' bodies and ids, and how
    # many events the integrations objects kept from it.
    shared: dict[str | None, tuple[list[tuple[bytes, tuple[str, ...]]], int]] = {}
    outbound: list[Outbound] = []
    for route in routes:
        repeated = seen(route.instance_id, ids) if seen is not None else None
        if repeated or route.filters:
            items, unwanted = _chosen(route, events, ids, repeated, encoded, stats, dropped)
            for pack in pack_encoded(route.instance_id, items, max_bytes=pack_bytes):
                outbound.append(_outbound(route, pack, revision, trace))
            continue
        group = route.integration_key if route.integration_key in named else None
        found = shared.get(group)
        if found is None:
            if events and not named:  # every event, unchanged
                if whole is None:
                    whole = orjson.dumps(events)  # one call, not one per event
                if len(whole) <= pack_bytes:
                    found = ([(whole, tuple(ids))], 0)
            if found is None:
                items, unwanted = _chosen(route, events, ids, None, encoded, stats, Counter())
                packs = pack_encoded("", items, max_bytes=pack_bytes)
                found = ([(p.body, p.message_ids) for p in packs], unwanted)
            shared[group] = found
        else:
            stats.dropped_by_integrations += found[1]
        runs, unwanted = found
        if unwanted:
            dropped[route.instance_id] += unwanted
        for body, held in runs:
            pack = Pack(body, dedupe_id(route.instance_id, held), held)
            outbound.append(_outbound(route, pack, revision, trace))
    return outbound


def _chosen(
    route: Route,
    events: Sequence[dict[str, Any]],
    ids: Sequence[str],
    repeated: set[str] | None,
    encoded: dict[int, tuple[str, bytes]],
    stats: RouterStats,
    dropped: Counter[str],
) -> tuple[list[tuple[str, bytes]], int]:
    """Return the route's events (encoded) and how many the integrations objects kept from it;
    count what was left out."""
    items: list[tuple[str, bytes]] = []
    unwanted = 0
    for index, event in enumerate(events):
        if repeated and ids[index] in repeated:
            stats.deduplicated += 1
            continue
        if not wants(event, route.integration_key):
            stats.dropped_by_integrations += 1
            dropped[route.instance_id] += 1
            unwanted += 1
            continue
        kept = apply_filters(route.filters, event) if route.filters else event
        if kept is None:
            stats.dropped_by_filters += 1
            dropped[route.instance_id] += 1
            continue
        if kept is event:
            item = encoded.get(id(event))
            if item is None:
                item = encoded[id(event)] = encode_event(event)
        else:
            item = encode_event(kept)
        items.append(item)
    return items, unwanted


def _outbound(route: Route, pack: Pack, revision: int, trace: dict[str, str]) -> Outbound:
    """Address a pack to its route's subject with the headers every pack carries."""
    headers = {MSG_ID: pack.dedupe_id, REVISION: str(revision), ATTEMPT: "1", **trace}
    headers[COUNT] = str(pack.count)
    headers[MESSAGE_IDS] = orjson.dumps(message_ids(pack.message_ids)).decode()
    return Outbound(route.subject, route.instance_id, pack, headers)


class Ingestor:
    """Find a write key's routes in the current table, route, publish, await the acks."""

    def __init__(
        self,
        nc: NatsClient,
        js: JetStreamContext,
        table: Callable[[], RouteTable | None],
        *,
        pack_bytes: int = DEFAULT_PACK_BYTES,
        publish_timeout: float = 5.0,
        coalesce_window: float = WINDOW_SECONDS,
        coalesce_min_rate: float = BUSY_RATE,
        recorder: DeliveryRecorder | None = None,
        metrics: RouterMetrics | None = None,
        budget: WorkspaceBudget | None = None,
    ) -> None:
        self._nc = nc
        self._budget = budget
        self._recorder = recorder
        self._metrics = metrics
        self._js = js
        self._table = table
        self._pack_bytes = pack_bytes
        self._timeout = publish_timeout
        self._coalescer = Coalescer(
            self._publish_one,
            max_bytes=pack_bytes,
            timeout=publish_timeout,
            recent=RecentIds(),
            window=coalesce_window,
            busy_rate=coalesce_min_rate,
        )
        self.stats = RouterStats()

    async def _publish_one(
        self, subject: str, body: bytes, headers: dict[str, str]
    ) -> Awaitable[object]:
        return await self._js.publish_async(subject, body, headers=headers)

    def count_rejected(self, reason: str) -> None:
        """Count a request refused before or while it was routed (metrics)."""
        if self._metrics is not None:
            self._metrics.rejected(reason)

    def ready(self) -> bool:
        """Tell whether the router has a configuration snapshot."""
        return self._table() is not None

    def storage_up(self) -> bool:
        """Tell whether the NATS connection is up."""
        return self._nc.is_connected

    def source(self, write_key: str | None) -> tuple[RouteTable, SourceRoutes]:
        """Return the current table and the source of a write key, or refuse the request."""
        table = self._table()
        if table is None:
            raise NotReadyError("the router has no configuration yet; retry shortly")
        if not write_key:
            raise UnknownWriteKeyError(
                "no write key: send it as the basic-auth user name or as `writeKey` in the body"
            )
        source = table.by_write_key.get(write_key)
        if source is None:
            raise UnknownWriteKeyError(
                "unknown write key; it may have been rotated: copy the source's current one"
            )
        return table, source

    async def ingest(
        self,
        write_key: str | None,
        events: Sequence[dict[str, Any]],
        *,
        traceparent: str | None = None,
        tracestate: str | None = None,
        sender: Hashable | None = None,
    ) -> list[str]:
        """Route and store a request's events; return their messageIds, in order.

        `sender` names the connection or peer the request came from (see `Coalescer.submit`).
        """
        table, source = self.source(write_key)
        if not self._nc.is_connected:
            raise StorageUnavailableError("the event store (NATS) is unreachable; retry shortly")
        stats = self.stats
        stats.requests += 1
        stats.events += len(events)
        if self._metrics is not None:
            self._metrics.received(source.source_id, len(events))
        dropped: Counter[str] = Counter()
        ids = [str(event.get("messageId", "")) for event in events]
        incoming = {TRACEPARENT: traceparent or "", TRACESTATE: tracestate or ""}
        with tracer.start_as_current_span(
            "ingest",
            context=extract_trace(incoming) if traceparent else None,
            attributes={
                "eventfn.source_id": source.source_id,
                "eventfn.events": len(events),
                MESSAGE_IDS_ATTRIBUTE: message_ids(ids),
            },
        ):
            carrier: dict[str, str] = {}
            PROPAGATOR.inject(carrier)
            if TRACEPARENT not in carrier:  # no tracer installed: still give packs a trace
                carrier = trace_headers(traceparent, tracestate)
            # A source in debt is refused before routing, at no cost; one that is not pays for
            # what its request stores once routed, into debt if need be (a bound paid first
            # refused requests of events naming destinations that would store little).
            cost = self._spend(source.source_id, 1) if source.routes else 0
            with tracer.start_as_current_span("route") as span:
                outbound = route_events(
                    source.routes,
                    events,
                    table.revision,
                    carrier,
                    pack_bytes=self._pack_bytes,
                    stats=stats,
                    dropped=dropped,
                    seen=self._coalescer.recent.seen,
                    ids=ids,
                )
                span.set_attribute("eventfn.packs", len(outbound))
            stored = sum(len(item.pack.body) for item in outbound)
            self._refund(source.source_id, cost - stored)
            if outbound:
                try:
                    await self._publish_all(outbound, sender)
                except StorageUnavailableError:
                    self._refund(source.source_id, stored)  # nothing stored: the retry pays
                    raise
                stats.packs += len(outbound)
        if self._metrics is not None:
            self._metrics.stored(source.source_id, len(events))
        routes = {r.instance_id: r for r in source.routes}
        for instance_id, count in dropped.items():  # counted once accepted, not on a 503
            if self._metrics is not None:
                self._metrics.filtered(instance_id, count)
            if self._recorder is not None:
                route = routes[instance_id]
                self._recorder.count(
                    instance_id, route.workspace_id, route.function_id, {"filtered": count}
                )
        return ids

    def _spend(self, source_id: str, cost: int) -> int:
        """Take what a request may store from the source's budget, or refuse it."""
        if self._budget is not None and cost:
            try:
                self._budget.take(source_id, cost=cost, who="this source")
            except ResourceExhausted as exc:
                self.stats.over_budget += 1
                raise OverBudgetError(exc.message, exc.retry_after or 1.0) from None
        return cost

    def _refund(self, source_id: str, cost: int) -> None:
        """Give back what was taken and not stored (a negative cost: take it, owing)."""
        if self._budget is not None and cost:
            self._budget.give_back(source_id, cost=cost)

    async def _publish_all(self, outbound: Sequence[Outbound], sender: Hashable | None) -> None:
        """Hand every pack to the coalescer, then wait until all are acknowledged (or refuse)."""
        # A request's packs for one instance come one after another (route_events).
        waits = [
            self._coalescer.submit(
                item, sender, continues=i > 0 and item.subject == outbound[i - 1].subject
            )
            for i, item in enumerate(outbound)
        ]
        done = waits[0] if len(waits) == 1 else asyncio.gather(*waits)
        # A timer that fails the wait (the coalescer times its publishes out itself; this
        # bounds a request queued behind another's publish): cheaper than asyncio.timeout.
        expiry = asyncio.get_running_loop().call_later(self._timeout, _expire, done)
        try:
            await done
        except (*NATS_ERRORS, TimeoutError) as exc:
            self.stats.publish_failures += 1
            log.warning("publish of %d packs failed: %r", len(outbound), exc)
            raise StorageUnavailableError(
                "the event store did not confirm the events; retry the request (it is deduplicated)"
            ) from exc
        finally:
            expiry.cancel()
            for wait in waits:  # given up on (timed out, or another pack failed): not awaited
                wait.cancel()


def _expire(waiting: asyncio.Future[Any]) -> None:
    if not waiting.done():
        waiting.set_exception(TimeoutError("no acknowledgement in time"))
