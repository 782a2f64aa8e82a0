"""Metrics of a service: an OpenTelemetry meter, scrapeable as Prometheus text on its own port
and exported by OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_METRICS_ENDPOINT`) is set.

Each service builds its own meter provider and Prometheus registry (several services may run
in one test process) and hands the meter to what records metrics; nothing is global.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from time import time_ns
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


@dataclass
class ServiceMetrics:
    """A service's meter, the histograms it keeps itself (exported with the meter's metrics)
    and where its Prometheus text is served (port 0: not served)."""

    meter: Meter
    port: int = 0
    histograms: Histograms = field(default_factory=lambda: Histograms())


# Attribute sets a metric kept here has at most (the SDK's own limit), and those of one
# workspace's objects (instances, sources: a tenant's to create): past them, new ones are
# counted in one overflow series, the workspace's or (past the first) everyone's. Without them
# one tenant's live instances took every series (5,000 of them made /metrics 49 MB, 5 s of CPU
# a scrape), and a neighbour's new instance was counted in the overflow series alone.
MAX_SERIES = 2000
PER_WORKSPACE_SERIES = MAX_SERIES // 4
OVERFLOW_ATTRIBUTES: dict[str, bool] = {"otel.metric.overflow": True}
WORKSPACE_ATTRIBUTE = "eventfn.workspace_id"
_OVERFLOW: tuple[Any, ...] = ("otel.metric.overflow",)
_WORKSPACE_OVERFLOW = object()  # first of the key of a workspace's overflow series
# At a limit, the series of objects gone are forgotten (on the event loop's thread, which
# alone changes the series); after a sweep that freed none, only every this many new sets.
SWEEP_EVERY = 100

Owner = Callable[[str], str | None]
V = TypeVar("V")


class _Bounded(Generic[V]):
    """Series by attribute values, the first naming an object (an instance, a source) whose
    workspace `owner` tells (None: the object is gone; its series are left out of what is
    exported and forgotten at the next sweep). At most PER_WORKSPACE_SERIES series of one
    workspace's objects and MAX_SERIES in all; past them, new attribute sets are counted in
    the workspace's overflow series, or in everyone's."""

    def __init__(self, names: tuple[str, ...], owner: Owner | None) -> None:
        self._names = names
        self._owner = owner
        self._series: dict[tuple[Any, ...], V] = {}
        self._owners: dict[tuple[Any, ...], str] = {}  # the workspace of a series' object
        self._per_workspace: Counter[str] = Counter()
        self._fruitless = False  # the last sweep freed nothing
        self._attempts = 0  # new attribute sets refused since

    def _key(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """Return the key a new attribute set is counted under: its own, or an overflow's."""
        workspace = self._owner(str(values[0])) if self._owner is not None else None

        def full() -> bool:
            return workspace is not None and self._per_workspace[workspace] >= PER_WORKSPACE_SERIES

        if full() or len(self._series) >= MAX_SERIES:
            self._sweep()
            if full():
                return (_WORKSPACE_OVERFLOW, workspace)
            if len(self._series) >= MAX_SERIES:
                return _OVERFLOW
        if workspace is not None:
            self._owners[values] = workspace
            self._per_workspace[workspace] += 1
        return values

    def _sweep(self) -> None:
        """Forget the series of objects gone (after a fruitless sweep, every SWEEP_EVERY)."""
        if self._owner is None or (self._fruitless and self._attempts < SWEEP_EVERY):
            self._attempts += 1
            return
        self._attempts = 0
        before = len(self._series)
        for key in list(self._series):
            if not self._exported(key):
                del self._series[key]
                workspace = self._owners.pop(key, None)
                if workspace is not None:
                    self._per_workspace[workspace] -= 1
                    if not self._per_workspace[workspace]:
                        del self._per_workspace[workspace]
        self._fruitless = len(self._series) == before

    def _exported(self, key: tuple[Any, ...]) -> bool:
        """Tell whether a series is exported: an overflow, or one of an object not gone."""
        if key is _OVERFLOW or key[0] is _WORKSPACE_OVERFLOW or self._owner is None:
            return True
        return self._owner(str(key[0])) is not None

    def _items(self) -> list[tuple[dict[str, Any], V]]:
        """Return the exported series with their attributes (from the collector's thread,
        while the event loop adds: the items are copied first)."""
        out = []
        for key, value in list(self._series.items()):
            if not self._exported(key):
                continue
            if key is _OVERFLOW:
                attributes: dict[str, Any] = dict(OVERFLOW_ATTRIBUTES)
            elif key[0] is _WORKSPACE_OVERFLOW:
                attributes = {**OVERFLOW_ATTRIBUTES, WORKSPACE_ATTRIBUTE: key[1]}
            else:
                attributes = dict(zip(self._names, key, strict=True))
            out.append((attributes, value))
        return out


class Tally(_Bounded[int]):
    """A counter kept as running sums in this process and read when metrics are collected
    (an observable counter, exported like any counter). Adding is a dict update: the SDK's
    `Counter.add` hashes the attributes and takes locks, ≈ 4 µs a call, several calls per
    request on the data path.

    `owner`, given, tells the workspace of the object the first attribute names (an instance,
    a source), None once it is gone: the sums of one gone are not exported, and forgotten (a
    tenant creating and deleting instances filled the metric's series for the process's
    lifetime, and past the SDK's 2,000 every other instance's counts went to one overflow
    series); series are bounded per workspace and in all (see `_Bounded`)."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        owner: Owner | None = None,
    ) -> None:
        super().__init__(attributes, owner)
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, *values: str | bool) -> None:
        """Add to the sum of these attribute values (one per attribute name, in order)."""
        sums = self._series
        total = sums.get(values)
        if total is None:
            key = self._key(values)
            sums[key] = sums.get(key, 0) + amount
        else:
            sums[values] = total + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(total, attributes) for attributes, total in self._items()]


# The SDK's bucket boundaries for a histogram no view configures (the `le` dashboards read).
BOUNDARIES = tuple(
    float(b) for b in (0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000)
)


class _Series:
    """One attribute set's bucket counts, sum, min and max."""

    __slots__ = ("counts", "max", "min", "start", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")
        self.start = time_ns()


class Distribution(_Bounded[_Series]):
    """A histogram kept as bucket counts in this process and exported with the SDK's metrics
    when a reader collects (`Histograms`), as the SDK's own histogram of that name, unit,
    meter and boundaries would be (cumulative, without exemplars). Recording is a dict lookup
    and a bisect: the SDK's `Histogram.record` hashes the attributes and takes locks.

    `owner` as in `Tally`. The SDK's histograms keep every attribute set for the process's
    lifetime and have no observable form: a tenant creating, feeding and deleting instances
    filled their 2,000 series, and every other instance's went to one overflow series."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        owner: Owner | None = None,
        boundaries: tuple[float, ...] = BOUNDARIES,
    ) -> None:
        super().__init__(attributes, owner)
        self.scope = InstrumentationScope(meter.name, meter.version, meter.schema_url)
        self._name, self._unit, self._description = name, unit, description
        self._boundaries = boundaries

    def record(self, value: float, *values: str | bool) -> None:
        """Record a value under these attribute values (one per attribute name, in order)."""
        series = self._series.get(values)
        if series is None:
            key = self._key(values)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self._boundaries) + 1)
        # A bucket holds the values up to its boundary, inclusive (as the SDK's).
        series.counts[bisect_left(self._boundaries, value)] += 1
        series.sum += value
        if value < series.min:
            series.min = value
        if value > series.max:
            series.max = value

    def collect(self, now: int) -> Metric | None:
        """Return the histogram's points of objects not gone (none: None)."""
        # A point's count is its buckets' (a value recorded meanwhile may miss from its sum).
        points = []
        for attributes, series in self._items():
            counts = list(series.counts)
            if not any(counts):  # made by `record`, not yet counted
                continue
            points.append(
                HistogramDataPoint(
                    attributes=attributes,
                    start_time_unix_nano=series.start,
                    time_unix_nano=now,
                    count=sum(counts),
                    sum=series.sum,
                    bucket_counts=counts,
                    explicit_bounds=self._boundaries,
                    min=series.min,
                    max=series.max,
                )
            )
        if not points:
            return None
        data = Histogram(points, AggregationTemporality.CUMULATIVE)
        return Metric(self._name, self._description, self._unit, data)


class Histograms:
    """The histograms a service keeps itself (`Distribution`), added to what its metric
    readers collect from the SDK (`prometheus_reader`, `otlp_reader`): a collection in which
    the SDK has nothing is not handed to the readers, and carries none of them (the executor's
    counters of the same invocations, forgotten with them, always come with its histograms)."""

    def __init__(self) -> None:
        self._kept: list[Distribution] = []

    def create(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        owner: Owner | None = None,
    ) -> Distribution:
        """Return a histogram of `meter`'s scope, exported by this service's readers."""
        kept = Distribution(
            meter, name, unit=unit, description=description, attributes=attributes, owner=owner
        )
        self._kept.append(kept)
        return kept

    def added_to(self, data: MetricsData) -> MetricsData:
        """Return the SDK's collection with these histograms in their meters' scopes."""
        now = time_ns()
        extra: dict[InstrumentationScope, list[Metric]] = {}
        for kept in self._kept:
            metric = kept.collect(now)
            if metric is not None:
                extra.setdefault(kept.scope, []).append(metric)
        if not extra or not data.resource_metrics:
            return data
        first, *others = data.resource_metrics  # one: the meter provider's resource
        scopes = [
            ScopeMetrics(s.scope, [*s.metrics, *extra.pop(s.scope)], s.schema_url)
            if s.scope in extra
            else s
            for s in first.scope_metrics
        ]
        scopes += [ScopeMetrics(s, metrics, s.schema_url or "") for s, metrics in extra.items()]
        return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *others])


def count_dead_letters_discarded(meter: Meter, discarded: Callable[[], int]) -> None:
    """Export `discarded()`: failed events a service discarded because their instance held
    as many packs of dead letters as it may (the executor's and the retrier's alike)."""
    meter.create_observable_counter(
        "eventfn.dead_letters.discarded",
        callbacks=[lambda _options: [Observation(discarded())]],
        unit="{event}",
        description="Failed events discarded: their instance held as many packs of dead "
        "letters as it may (EVENTFN_DEAD_MAX_PER_INSTANCE)",
    )


def prometheus_reader(registry: CollectorRegistry, histograms: Histograms) -> MetricReader:
    """Return a reader serving the SDK's metrics and `histograms` as Prometheus text."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    class Reader(PrometheusMetricReader):
        def _receive_metrics(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            data = histograms.added_to(metrics_data)
            super()._receive_metrics(data, timeout_millis, **kwargs)

    return Reader(registry=registry, disable_target_info=True)


def otlp_reader(histograms: Histograms) -> MetricReader:
    """Return a reader exporting the SDK's metrics and `histograms` by OTLP (gRPC)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    class Reader(PeriodicExportingMetricReader):
        def _receive_metrics(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> None:
            data = histograms.added_to(metrics_data)
            super()._receive_metrics(data, timeout_millis, **kwargs)

    return Reader(OTLPMetricExporter())


def split_listen(listen: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 in brackets) into its parts."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_metrics(service: str, listen: str | None, stack: AsyncExitStack) -> ServiceMetrics:
    """Build the service's meter; serve /metrics on `listen` (`host:port`) unless it is empty."""
    readers: list[MetricReader] = []
    histograms = Histograms()
    port = 0
    if listen:
        registry = CollectorRegistry()
        readers.append(prometheus_reader(registry, histograms))
        host, wanted = split_listen(listen)
        try:
            server = _serve_scrapes(host, wanted, registry)
        except OSError as error:
            variable = f"EVENTFN_{service.removeprefix('eventfn-').upper()}_METRICS_LISTEN"
            raise OSError(
                f"cannot serve metrics on {listen} ({error.strerror}): choose a free address "
                f"({variable}), or set it empty to serve none"
            ) from error
        stack.callback(server.stop)
        port = server.server_port
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        readers.append(otlp_reader(histograms))
    if not readers:
        return ServiceMetrics(NoOpMeterProvider().get_meter(service))
    provider = MeterProvider(
        metric_readers=readers, resource=Resource.create({"service.name": service})
    )
    stack.callback(provider.shutdown)
    return ServiceMetrics(provider.get_meter(service), port, histograms)


class _Quiet(WSGIRequestHandler):
    """Answer scrapes without a log line each."""

    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


class _ScrapeServer(ThreadingWSGIServer):
    """prometheus_client's scrape server (a thread per scrape), served from its own daemon
    thread that sleeps until a scrape or `stop` comes: the library's `serve_forever` wakes
    every half second to look whether it should stop, and a stop waits for it."""

    timeout = 0  # `handle_request` only looks: the loop has seen the socket readable

    def serve(self) -> None:
        """Serve scrapes from a daemon thread until `stop`."""
        self._stopping = False
        self._wake, self._waker = socket.socketpair()
        self._thread = threading.Thread(target=self._loop, name="metrics", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self.handle_request()

    def stop(self) -> None:
        """Stop serving and close the socket (the port is free again)."""
        self._stopping = True
        self._waker.send(b"\0")
        self._thread.join()
        self.server_close()
        self._wake.close()
        self._waker.close()


def _serve_scrapes(host: str, port: int, registry: CollectorRegistry) -> _ScrapeServer:
    """Serve the registry's Prometheus text on `host:port` (IPv4 or IPv6, as it resolves)."""
    family, _, _, _, where = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type("ScrapeServer", (_ScrapeServer,), {"address_family": family})
    server = make_server(str(where[0]), port, make_wsgi_app(registry), server_class, _Quiet)
    server.serve()
    return server


def status_class(status: int | None) -> str:
    """Name an HTTP status's class (`2xx` … `5xx`), or `error` when there was no response."""
    return f"{status // 100}xx" if status else "error"
