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
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from time import monotonic, time_ns
from typing import Any
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


# Attribute sets a metric kept here has at most (the SDK's own limit): past them, new ones are
# counted in one overflow series, as the SDK's (live instances are a tenant's to create: 5,000
# of them made /metrics 49 MB, 5 s of CPU a scrape).
MAX_SERIES = 2000
OVERFLOW_ATTRIBUTES: dict[str, bool] = {"otel.metric.overflow": True}
_OVERFLOW = ("otel.metric.overflow",)
# At the limit, series of instances no longer live are forgotten at most this often (not
# only when metrics are collected: a collection may not come for a while).
SWEEP_SECONDS = 1.0


class _Bounded:
    """Attribute sets kept per series, at most MAX_SERIES of them: at the limit, those of
    instances no longer `live` (the first value) are forgotten first, once in SWEEP_SECONDS."""

    _live: Callable[[str], bool] | None
    _swept = 0.0

    def _room(self, series: dict[Any, Any]) -> bool:
        """Tell whether `series` may take another attribute set."""
        now = monotonic()
        if self._live is not None and now >= self._swept + SWEEP_SECONDS:
            self._swept = now
            for values in list(series):
                if values is not _OVERFLOW and not self._live(str(values[0])):
                    series.pop(values, None)
        return len(series) < MAX_SERIES


class Tally(_Bounded):
    """A counter kept as running sums in this process and read when metrics are collected
    (an observable counter, exported like any counter). Adding is a dict update: the SDK's
    `Counter.add` hashes the attributes and takes locks, ≈ 4 µs a call, several calls per
    request on the data path.

    `live`, given, tells whether the object its first attribute names (an instance) still
    exists: the sums of one that does not are forgotten when metrics are collected (a tenant
    creating and deleting instances filled the metric's series for the process's lifetime, and
    past the SDK's 2,000 every other instance's counts went to one overflow series). At most
    MAX_SERIES sums are kept, the rest in one overflow series."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        live: Callable[[str], bool] | None = None,
    ) -> None:
        self._names = attributes
        self._live = live
        self._sums: dict[tuple[str | bool, ...], int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, *values: str | bool) -> None:
        """Add to the sum of these attribute values (one per attribute name, in order)."""
        sums = self._sums
        total = sums.get(values)
        if total is None:
            if len(sums) >= MAX_SERIES and not self._room(sums):
                values = _OVERFLOW
            total = sums.get(values, 0)
        sums[values] = total + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        # The collector's thread reads while the event loop adds: copy the items first.
        items = list(self._sums.items())
        if self._live is not None:
            kept = []
            for values, total in items:
                if values is _OVERFLOW or self._live(str(values[0])):
                    kept.append((values, total))
                else:
                    self._sums.pop(values, None)
            items = kept
        return [Observation(total, self._attributes(values)) for values, total in items]

    def _attributes(self, values: tuple[str | bool, ...]) -> dict[str, str | bool]:
        if values is _OVERFLOW:
            return dict(OVERFLOW_ATTRIBUTES)
        return dict(zip(self._names, values, strict=True))


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


class Distribution(_Bounded):
    """A histogram kept as bucket counts in this process and exported with the SDK's metrics
    when a reader collects (`Histograms`), as the SDK's own histogram of that name, unit,
    meter and boundaries would be (cumulative, without exemplars). Recording is a dict lookup
    and a bisect: the SDK's `Histogram.record` hashes the attributes and takes locks.

    `live` as in `Tally`: the series of an instance that no longer exists are forgotten when
    metrics are collected. The SDK's histograms keep every attribute set for the process's
    lifetime and have no observable form: a tenant creating, feeding and deleting instances
    filled their 2,000 series, and every other instance's went to one overflow series. At
    most MAX_SERIES attribute sets are kept, the rest in one overflow series."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        *,
        unit: str,
        description: str,
        attributes: tuple[str, ...],
        live: Callable[[str], bool] | None = None,
        boundaries: tuple[float, ...] = BOUNDARIES,
    ) -> None:
        self.scope = InstrumentationScope(meter.name, meter.version, meter.schema_url)
        self._name, self._unit, self._description = name, unit, description
        self._names = attributes
        self._live = live
        self._boundaries = boundaries
        self._series: dict[tuple[str | bool, ...], _Series] = {}

    def record(self, value: float, *values: str | bool) -> None:
        """Record a value under these attribute values (one per attribute name, in order)."""
        series = self._series.get(values)
        if series is None:
            if len(self._series) >= MAX_SERIES and not self._room(self._series):
                values = _OVERFLOW
                series = self._series.get(values)
            if series is None:
                series = self._series[values] = _Series(len(self._boundaries) + 1)
        # A bucket holds the values up to its boundary, inclusive (as the SDK's).
        series.counts[bisect_left(self._boundaries, value)] += 1
        series.sum += value
        if value < series.min:
            series.min = value
        if value > series.max:
            series.max = value

    def collect(self, now: int) -> Metric | None:
        """Return the histogram's points of live instances (none: None)."""
        # The collector's thread reads while the event loop records: copy the items first; a
        # point's count is its buckets' (a value recorded meanwhile may miss from its sum).
        points = []
        for values, series in list(self._series.items()):
            overflow = values is _OVERFLOW
            if not overflow and self._live is not None and not self._live(str(values[0])):
                self._series.pop(values, None)
                continue
            counts = list(series.counts)
            if not any(counts):  # made by `record`, not yet counted
                continue
            points.append(
                HistogramDataPoint(
                    attributes=dict(OVERFLOW_ATTRIBUTES)
                    if overflow
                    else dict(zip(self._names, values, strict=True)),
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
        live: Callable[[str], bool] | None = None,
    ) -> Distribution:
        """Return a histogram of `meter`'s scope, exported by this service's readers."""
        kept = Distribution(
            meter, name, unit=unit, description=description, attributes=attributes, live=live
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
