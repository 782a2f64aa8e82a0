"""What an invocation tells operators: its span's status, a span per fetch, and metrics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from services.common.metrics import (
    Histograms,
    Owner,
    Tally,
    count_dead_letters_discarded,
    status_class,
)
from services.common.telemetry import PROPAGATOR
from services.common.tracer import get_tracer
from services.runtime import InvocationResult, OutcomeKind, RequestTrace
from services.runtime.outcomes import cut_text

tracer = get_tracer("eventfn.executor")
# The order of badness, for an invocation's one outcome (its worst event's).
_WORST = (OutcomeKind.DELIVERED, OutcomeKind.DISCARD, OutcomeKind.RETRY, OutcomeKind.FAILURE)


def worst_outcome(result: InvocationResult) -> OutcomeKind:
    """Return the worst outcome of an invocation's events."""
    kinds = {o.kind for o in result.outcomes}
    return max(kinds, key=_WORST.index) if kinds else OutcomeKind.DELIVERED


@lru_cache(maxsize=256)  # a function fetches few distinct URLs, each many times
def endpoint(url: str) -> tuple[str, str, int | None]:
    """Return a fetched URL without its query string, fragment or userinfo (for `url.full`),
    its host and its port; nothing of one Python cannot read (a port past 65535, a host the
    redaction of a secret bracketed): it comes from the function, and may be anything."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "", "", None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if port:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), host, port


def annotate(span: Span, result: InvocationResult) -> None:
    """Set an invoke span's outcome (its worst event's, and each outcome's count when they
    differ): ERROR with the error's class and message when an event failed or is retried
    (never its stack, logs or the event)."""
    span.set_attribute("eventfn.events", len(result.outcomes))
    span.set_attribute("eventfn.outcome", worst_outcome(result).value)
    counts = Counter(o.kind for o in result.outcomes)
    if len(counts) > 1:  # the worst is one event's: say what became of the others too
        span.set_attribute(
            "eventfn.outcomes",
            ", ".join(f"{counts[kind]} {kind.value}" for kind in _WORST if kind in counts),
        )
    bad = next(
        (o for o in result.outcomes if o.kind in (OutcomeKind.FAILURE, OutcomeKind.RETRY)), None
    )
    if bad is None:
        return
    span.set_status(Status(StatusCode.ERROR, bad.error_type or "Error"))
    span.add_event(
        "exception",
        {
            "exception.type": bad.error_type or "Error",
            "exception.message": (bad.message or "")[:1000],
        },
    )


# The fetches of one invocation that get a span each, and the characters of a URL kept in one.
MAX_FETCH_SPANS = 100
MAX_SPAN_URL_CHARS = 1024
UNTRACED_FETCHES = "eventfn.fetches_untraced"


def outgoing_trace(invoke: Span) -> tuple[tuple[str, str], ...]:
    """Return the W3C trace headers (traceparent, tracestate) naming an invoke span as parent.

    The invoke span, not the fetch's own span: fetch spans are made after the invocation
    (`record_fetches`), so their ids are unknown while it runs. Without a tracer provider the
    invoke span is the pack's trace context itself (the router always gives packs one), so
    the event's trace id still goes out; an invocation with no trace at all sends none.
    """
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, context=trace.set_span_in_context(invoke))
    return tuple(carrier.items())


def record_fetches(parent: Span, requests: Iterable[RequestTrace]) -> None:
    """Add a CLIENT span per fetch the function made, under its invoke span: the first
    MAX_FETCH_SPANS of them, URLs cut to MAX_SPAN_URL_CHARS (an invocation may make 10,000
    fetches of 64 KB URLs: its spans made a trace too large to store, and lost the other
    traces exported with it); the invoke span counts the fetches left out."""
    if not parent.is_recording():
        return
    context = trace.set_span_in_context(parent)
    traced = untraced = 0
    for r in requests:
        if not r.start_ns:
            continue
        if traced == MAX_FETCH_SPANS:
            untraced += 1
            continue
        traced += 1
        full, host, port = endpoint(r.url)
        attributes: dict[str, str | int] = {
            "http.request.method": r.method,
            "url.full": cut_text(full, MAX_SPAN_URL_CHARS),
            "server.address": cut_text(host, MAX_SPAN_URL_CHARS),
        }
        if port:
            attributes["server.port"] = port
        if r.status:
            attributes["http.response.status_code"] = r.status
        span = tracer.start_span(
            r.method,
            context=context,
            kind=SpanKind.CLIENT,
            start_time=r.start_ns,
            attributes=attributes,
        )
        if r.error or (r.status or 0) >= 500:
            span.set_attribute("error.type", "fetch_error" if r.error else str(r.status))
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=r.start_ns + int(r.duration_ms * 1e6))
    if untraced:
        parent.set_attribute(UNTRACED_FETCHES, untraced)


OTHER_HOSTS = "other"


class HostLabels:
    """Bound the hosts a fetch's duration is labelled by: those that answered, few per instance.

    A function chooses the hosts it fetches, so a label per host would let one tenant grow
    every executor's /metrics without end and fill OpenTelemetry's 2,000 series per metric,
    after which every tenant's fetches share its one overflow series. Here the first `limit`
    hosts to answer a fetch keep their name, at most `per_instance` of them admitted by any
    one instance: a function fetching thousands of names takes a few places, not all of them,
    and the APIs many instances call (what an operator watches) keep theirs; a host already
    named costs an instance nothing. A fetch without a response (refused by the egress
    policy, a name that does not resolve, a refused connection) admits no host. Every other
    host is `other`, until the executor restarts.
    """

    def __init__(self, *, limit: int = 100, per_instance: int = 10) -> None:
        self._limit = limit
        self._per_instance = per_instance
        self._named: set[str] = set()
        self._admitted: dict[str, int] = {}  # hosts admitted, by instance

    def label(self, instance_id: str, host: str, answered: bool) -> str:
        """Return the `server.address` of a fetch of `instance_id` to `host`."""
        if host in self._named:
            return host
        admitted = self._admitted.get(instance_id, 0)
        if not answered or len(self._named) >= self._limit or admitted >= self._per_instance:
            return OTHER_HOSTS
        self._admitted[instance_id] = admitted + 1
        self._named.add(host)
        return host


class ExecutorMetrics:
    """The executor's instruments: outcomes, invocations, durations, fetches, V8 workers."""

    def __init__(
        self,
        meter: Meter,
        restarts: Callable[[], Mapping[str, int]],
        owner: Owner | None = None,
        *,
        histograms: Histograms,
        dead_discarded: Callable[[], int] = lambda: 0,
    ) -> None:
        """`owner` tells an instance's workspace, None once it is gone (see `Tally`); the
        invocations' histograms by instance are kept in `histograms` (see `Distribution`);
        `dead_discarded` counts the events discarded because their instance's dead letters
        were full."""
        names = ("eventfn.instance_id", "eventfn.outcome")
        self._events = Tally(
            meter,
            "eventfn.events.outcomes",
            unit="{event}",
            description="Events by outcome",
            attributes=names,
            owner=owner,
        )
        self._invocations = Tally(
            meter,
            "eventfn.invocations",
            unit="{invocation}",
            description="Invocations by outcome",
            attributes=names,
            owner=owner,
        )
        self._duration = histograms.create(
            meter,
            "eventfn.invocation.duration",
            unit="s",
            description="Invocation duration",
            attributes=("eventfn.instance_id", "eventfn.batch"),
            owner=owner,
        )
        self._size = histograms.create(
            meter,
            "eventfn.invocation.events",
            unit="{event}",
            description="Events per invocation",
            attributes=("eventfn.instance_id",),
            owner=owner,
        )
        # Kept here, not by the SDK: its `Histogram.record` was 18 % of the executor's loop at
        # 1,000 single-event invocations a second, each with one fetch.
        self._fetch = histograms.create(
            meter,
            "http.client.request.duration",
            unit="s",
            description="Function fetch duration",
            attributes=("server.address", "eventfn.status_class"),
        )
        self._hosts = HostLabels()

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(n, {"cause": cause}) for cause, n in restarts().items()]

        meter.create_observable_counter(
            "eventfn.runtime.worker.restarts",
            callbacks=[observe],
            unit="{restart}",
            description="V8 worker processes replaced, by cause",
        )
        count_dead_letters_discarded(meter, dead_discarded)

    def record(self, instance_id: str, batch: bool, result: InvocationResult) -> None:
        """Count one invocation and its events' outcomes."""
        counts: dict[str, int] = {}
        for o in result.outcomes:
            counts[o.kind.value] = counts.get(o.kind.value, 0) + 1
        for outcome, n in counts.items():
            self._events.add(n, instance_id, outcome)
        self._invocations.add(1, instance_id, worst_outcome(result).value)
        self._duration.record(result.duration_ms / 1000, instance_id, batch)
        self._size.record(len(result.outcomes), instance_id)
        for r in result.requests:
            self._fetch.record(
                r.duration_ms / 1000,
                self._hosts.label(instance_id, endpoint(r.url)[1], r.status is not None),
                status_class(r.status),
            )
